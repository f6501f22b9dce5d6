import math

import keras
import keras_hub
import numpy as np
import pytest

from kerasft import testing
from kerasft.evaluate import perplexity
from kerasft.models import architecture


def _reference_sums(model, batches):
    """Sum of weighted NLL and of weights from full `model(x)` logits, numpy."""
    total, weight = 0.0, 0.0
    for x, y, sample_weight in batches:
        # `predict_on_batch` is `model(x)` compiled (eager JAX is slow).
        logits = np.asarray(model.predict_on_batch(x), dtype="float64")
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        nll = -np.take_along_axis(log_probs, y[..., None].astype("int64"), axis=-1)[..., 0]
        total += float((nll * sample_weight).sum())
        weight += float(sample_weight.sum())
    return total, weight


def _reference_loss(model, batches):
    total, weight = _reference_sums(model, batches)
    return total / weight


def _capped_gemma3(cap):
    # `testing.tiny_causal_lm("gemma3")` (same seed, same weights) with a final
    # logit soft-cap small enough that tanh is far from linear on its logits.
    backbone = testing.tiny_gemma3_backbone(final_logit_soft_cap=cap)
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


@pytest.fixture(scope="module")
def gemma3():
    return testing.tiny_causal_lm("gemma3")


@pytest.fixture(scope="module")
def batches():
    return [testing.random_token_batch(seed=seed) for seed in range(3)]


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_equals_numpy_log_softmax_of_model_logits(kind, gemma3, batches):
    model = gemma3 if kind == "gemma3" else testing.tiny_causal_lm(kind)
    result = perplexity(model, batches, progress=False)
    expected = _reference_loss(model, batches)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(result["perplexity"], math.exp(expected), rtol=1e-5)
    # 3 batches of 4 rows x 12 targets; rows 0 and 2 have 3 padded targets.
    assert result["tokens"] == 3 * (4 * 12 - 2 * 3)
    # A random model over 97 tokens is close to uniform: loss near ln(97).
    assert abs(result["loss"] - math.log(97)) < 0.5


def test_final_logit_soft_cap_is_applied_like_the_model(gemma3, batches):
    capped = _capped_gemma3(cap=0.5)
    uncapped = gemma3
    # Same weights: only the cap differs.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(architecture.token_embedding(capped).embeddings),
        keras.ops.convert_to_numpy(architecture.token_embedding(uncapped).embeddings),
    )
    capped_loss = perplexity(capped, batches, progress=False)["loss"]
    uncapped_loss = perplexity(uncapped, batches, progress=False)["loss"]
    np.testing.assert_allclose(capped_loss, _reference_loss(capped, batches), rtol=1e-5)
    np.testing.assert_allclose(uncapped_loss, _reference_loss(uncapped, batches), rtol=1e-5)
    # Capping at 0.5 squeezes every logit into (-0.5, 0.5): the distribution
    # is nearly uniform, so the loss is within 1 nat of ln(97) and differs
    # from the uncapped loss.
    assert abs(capped_loss - math.log(97)) < 1.0
    assert abs(capped_loss - uncapped_loss) > 1e-3


def test_chunked_equals_unchunked(gemma3, batches):
    losses = [
        perplexity(gemma3, batches, chunk_size=chunk_size, progress=False)["loss"]
        for chunk_size in (1, 7, 10_000)
    ]
    np.testing.assert_allclose(losses, [losses[-1]] * 3, rtol=1e-6)


def test_token_weighted_over_batches_not_mean_of_batch_means(gemma3):
    full = testing.random_token_batch(seed=0)
    x, y, sample_weight = testing.random_token_batch(seed=1)
    single = np.zeros_like(sample_weight)
    single[1, 5] = 1.0  # a batch with one scored token
    batches = [full, (x, y, single)]
    result = perplexity(gemma3, batches, progress=False)
    total, weight = _reference_sums(gemma3, batches)
    np.testing.assert_allclose(result["loss"], total / weight, rtol=1e-5)
    assert result["tokens"] == 42 + 1
    per_batch = [perplexity(gemma3, [b], progress=False)["loss"] for b in batches]
    # The one-token batch weighs 1/43 of the result, not 1/2.
    np.testing.assert_allclose(result["loss"], (42 * per_batch[0] + per_batch[1]) / 43, rtol=1e-6)
    assert abs(result["loss"] - np.mean(per_batch)) > 1e-3


def test_fractional_sample_weights(gemma3):
    x, y, sample_weight = testing.random_token_batch(seed=4)
    weights = sample_weight * np.linspace(0.25, 2.0, 12, dtype="float32")
    batches = [(x, y, weights)]
    result = perplexity(gemma3, batches, progress=False)
    np.testing.assert_allclose(result["loss"], _reference_loss(gemma3, batches), rtol=1e-5)
    assert result["tokens"] == 42


def test_accepts_a_py_dataset_and_shows_progress(gemma3, batches, capsys):
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, index):
            return batches[index]

    from_list = perplexity(gemma3, batches, progress=False)
    from_dataset = perplexity(gemma3, Batches(), progress=True)
    assert from_dataset == from_list
    assert "3/3" in capsys.readouterr().out


def test_bfloat16_model_scores_in_float32(batches):
    model = testing.tiny_causal_lm("gemma3", num_layers=1, dtype="bfloat16")
    result = perplexity(model, batches, progress=False)
    assert result["loss"] == pytest.approx(_reference_loss(model, batches), rel=1e-4)
    assert math.isfinite(result["perplexity"])


def test_bad_arguments(gemma3, batches):
    x, y, sample_weight = batches[0]
    with pytest.raises(ValueError, match="chunk_size=0"):
        perplexity(gemma3, batches, chunk_size=0)
    with pytest.raises(ValueError, match="batch 0 of type tuple with 2 elements"):
        perplexity(gemma3, [(x, y)], progress=False)
    with pytest.raises(ValueError, match=r"y.shape=\(4, 11\)"):
        perplexity(gemma3, [(x, y[:, :-1], sample_weight)], progress=False)
    with pytest.raises(ValueError, match="No position has a nonzero"):
        perplexity(gemma3, [(x, y, 0 * sample_weight)], progress=False)
    with pytest.raises(ValueError, match="model=Sequential"):
        perplexity(keras.Sequential([keras.layers.Dense(2)]), batches, progress=False)


def test_bare_backbone_is_refused(gemma3, batches):
    # A backbone has a token embedding but returns hidden states, not logits.
    with pytest.raises(ValueError, match="model=Gemma3Backbone with backbone=NoneType"):
        perplexity(gemma3.backbone, batches, progress=False)
