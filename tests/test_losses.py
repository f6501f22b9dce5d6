import keras
import numpy as np
import pytest

from kerasft.losses import TokenNormalizedBatches, causal_lm_loss


def uneven_batches(rng):
    """Four micro-batches whose masks hold very different token counts."""
    batches = []
    for trained in (1, 7, 3, 12):
        y = rng.integers(0, 11, (2, 6)).astype("int32")
        w = np.zeros((2, 6), "float32")
        w.flat[:trained] = 1.0
        logits = rng.normal(size=(2, 6, 11)).astype("float32")
        batches.append(({"logits": logits}, y, w))
    return batches


def token_losses(logits, y):
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_accumulated_loss_is_the_mean_over_all_trained_tokens(steps):
    rng = np.random.default_rng(0)
    batches = uneven_batches(rng)
    normalized = TokenNormalizedBatches(batches, accumulation_steps=steps)
    loss = causal_lm_loss(token_mean=False)
    for window in range(0, 4, steps):
        micro = [normalized[i] for i in range(window, window + steps)]
        # Keras averages the gradients (and so the losses) of the micro-batches.
        keras_value = np.mean(
            [float(loss(y, x["logits"], sample_weight=w)) for x, y, w in micro]
        )
        raw = batches[window : window + steps]
        total = sum((token_losses(x["logits"], y) * w).sum() for x, y, w in raw)
        tokens = sum(w.sum() for _, _, w in raw)
        assert keras_value == pytest.approx(total / tokens, rel=1e-5)


def test_default_loss_is_the_token_mean_of_one_batch():
    x, y, w = uneven_batches(np.random.default_rng(2))[1]
    expected = (token_losses(x["logits"], y) * w).sum() / w.sum()
    assert float(causal_lm_loss()(y, x["logits"], sample_weight=w)) == pytest.approx(expected, rel=1e-5)


def test_plain_per_batch_means_would_be_wrong():
    # Guards the test above: without normalisation the two differ.
    rng = np.random.default_rng(0)
    batches = uneven_batches(rng)
    loss = causal_lm_loss()
    naive = np.mean([float(loss(y, x["logits"], sample_weight=w)) for x, y, w in batches])
    total = sum((token_losses(x["logits"], y) * w).sum() for x, y, w in batches)
    assert abs(naive - total / sum(w.sum() for _, _, w in batches)) > 0.1


def test_accumulation_steps_must_be_positive():
    with pytest.raises(ValueError, match="accumulation_steps=0"):
        TokenNormalizedBatches([], accumulation_steps=0)


def test_length_and_keras_iteration():
    batches = uneven_batches(np.random.default_rng(1))
    normalized = TokenNormalizedBatches(batches, accumulation_steps=2)
    assert len(normalized) == 4
    assert isinstance(normalized, keras.utils.PyDataset)
