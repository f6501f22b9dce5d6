"""The training forward pass computes logits only at weighted positions, exactly.

Each check trains or evaluates the same model twice, once through
`kerasft.training_forward` (what `Recipe.compile` installs) and once through
Keras's own full-logits loss, and compares loss, gradients (one SGD step at
learning rate 1 moves each weight by minus its gradient) and accuracy.
"""

import keras
import numpy as np
import pytest

from kerasft import testing, training_forward
from kerasft.losses import TokenNormalizedBatches
from kerasft.models import architecture
from kerasft.recipes import IA3, FullFineTune, LoRA, PrefixTuning, PromptTuning
from kerasft.recipes.freeze import Freeze
from kerasft.recipes.qlora import QLoRA
from tests.conftest import to_numpy


def _model(kind, soft_cap=None):
    if kind == "gemma3" and soft_cap is not None:
        backbone = testing.tiny_gemma3_backbone(final_logit_soft_cap=soft_cap)
        import keras_hub

        return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
    return testing.tiny_causal_lm(kind)


def _random_weights(shape, seed=1):
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.1, 2.0, shape) * (rng.uniform(size=shape) < 0.5)
    weights[0, 0] = 1.0  # at least one trained token
    return weights.astype("float32")


def _batch(batch_size=3, sequence_length=10, seed=0):
    x, y, _ = testing.random_token_batch(batch_size, sequence_length, seed=seed)
    return x, y, _random_weights(y.shape, seed + 1)


def _compile_plain(model, token_mean=True):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True,
            reduction="mean_with_sample_weight" if token_mean else "sum_over_batch_size",
        ),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def _one_step(model, batch, install, token_mean=True, chunk_size=4):
    """Loss, accuracy and per-variable weight change of one SGD(1.0) step."""
    start = [to_numpy(v).copy() for v in model.trainable_variables]
    _compile_plain(model, token_mean)
    if install:
        training_forward.install(model, token_mean=token_mean, chunk_size=chunk_size)
    else:
        training_forward.uninstall(model)
    x, y, w = batch
    logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
    steps = [to_numpy(v) - s for v, s in zip(model.trainable_variables, start)]
    for v, s in zip(model.trainable_variables, start):
        v.assign(s)
    return logs, steps


def _assert_same_step(model, batch, token_mean=True, chunk_size=4):
    chunked, chunked_steps = _one_step(model, batch, True, token_mean, chunk_size)
    reference, reference_steps = _one_step(model, batch, False, token_mean, chunk_size)
    np.testing.assert_allclose(chunked["loss"], reference["loss"], rtol=1e-5)
    np.testing.assert_allclose(chunked["accuracy"], reference["accuracy"], rtol=1e-6)
    moved = 0
    for got, want in zip(chunked_steps, reference_steps):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max()))
        moved += bool(np.abs(want).max() > 0)
    assert moved >= 1
    return chunked


@pytest.mark.parametrize("kind,soft_cap", [("gemma", None), ("gemma3", None), ("gemma3", 0.5)])
def test_full_fine_tune_step_equals_full_logits(kind, soft_cap):
    model = _model(kind, soft_cap)  # every weight trains, the tied embedding too
    _assert_same_step(model, _batch())


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_chunk_sizes_and_skipped_chunks_are_exact(chunk_size):
    model = _model("gemma3")
    x, y, w = _batch()
    w[1:] = 0.0  # most chunks hold no weighted position and are skipped
    _assert_same_step(model, (x, y, w), chunk_size=chunk_size)


def test_no_sample_weight_trains_every_position():
    model = _model("gemma")
    x, y, _ = _batch()
    chunked, _ = _one_step(model, (x, y, None), True)
    reference, _ = _one_step(model, (x, y, None), False)
    np.testing.assert_allclose(chunked["loss"], reference["loss"], rtol=1e-5)


def test_loss_matches_hand_computed_log_softmax():
    model = _model("gemma3", soft_cap=0.5)
    x, y, w = _batch()
    hidden = architecture.backbone(model)(x)
    loss, _, _ = training_forward.weighted_token_loss(
        architecture.token_embedding(model), hidden, y, w, chunk_size=5
    )
    logits = to_numpy(model(x)).astype("float64")
    # keras-hub's soft cap: the model's logits never exceed the cap.
    assert np.abs(logits).max() <= 0.5 + 1e-6
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(to_numpy(loss)), (nll * w).sum() / w.sum(), rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [4, 128])
def test_weighted_token_logprobs_equal_full_log_softmax_where_weighted(chunk_size):
    model = _model("gemma3")
    x, y, w = _batch()
    full = to_numpy(model(x))
    shifted = full - full.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = np.take_along_axis(log_softmax, y[..., None].astype(int), -1)[..., 0]
    hidden = architecture.backbone(model)(x)
    got = to_numpy(training_forward.weighted_token_logprobs(
        architecture.token_embedding(model), hidden, y, w, chunk_size=chunk_size))
    np.testing.assert_allclose(got[w != 0], expected[w != 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[w == 0], 0.0)
    assert (w == 0).any() and (w != 0).sum() > chunk_size or chunk_size == 128


def test_inference_keeps_full_logits():
    model = _model("gemma3")
    x, _, _ = _batch()
    before = to_numpy(model(x))
    training_forward.install(model)
    np.testing.assert_array_equal(to_numpy(model(x)), before)
    np.testing.assert_allclose(model.predict(x, verbose=0), before, rtol=1e-6, atol=1e-6)
    assert set(model(x, training=True)) == {training_forward.HIDDEN_STATES}
    training_forward.uninstall(model)
    assert not training_forward.is_installed(model)
    assert to_numpy(model(x, training=True)).shape == before.shape


def test_recompiling_with_another_loss_uses_full_logits():
    model = _model("gemma")
    x, y, w = _batch()
    training_forward.install(model)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
    )
    logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
    logits = to_numpy(model(x)).astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    np.testing.assert_allclose(logs["loss"], (nll * w).sum(), rtol=1e-5)


def _nll(model, x, y):
    logits = to_numpy(model(x)).astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]


def test_token_normalized_accumulation_stays_exact():
    """Each micro-batch's loss is its share of the mean over both batches' tokens."""
    model = _model("gemma3")
    batches = [_batch(seed=0), _batch(seed=5)]
    tokens = sum(float(w.sum()) for _, _, w in batches)
    normalized = TokenNormalizedBatches(batches, accumulation_steps=2)
    for index, (x, y, w) in enumerate(batches):
        logs = _assert_same_step(model, normalized[index], token_mean=False)
        share = (_nll(model, x, y) * w).sum() * 2 / tokens
        np.testing.assert_allclose(logs["loss"], share, rtol=1e-5)


RECIPES = {
    "lora": lambda: LoRA(rank=2, alpha=4),
    "dora": lambda: LoRA(rank=2, alpha=4, use_dora=True),
    "qlora": lambda: QLoRA(rank=2, alpha=4, group_size=8),
    "ia3": lambda: IA3(),
    "prefix": lambda: PrefixTuning(num_virtual_tokens=3),
    "prompt": lambda: PromptTuning(num_virtual_tokens=3),
    "full": lambda: FullFineTune(),
    "freeze": lambda: Freeze(),
}


CASES = [("gemma3", name) for name in sorted(RECIPES)] + [("gemma", "lora"), ("gemma", "prefix")]
CASES += [pytest.param("gemma", name, marks=pytest.mark.slow)
          for name in sorted(RECIPES) if name not in ("lora", "prefix")]


@pytest.mark.parametrize("kind,name", CASES)
def test_every_recipe_compiles_the_chunked_loss_and_trains_exactly(kind, name):
    model = RECIPES[name]().apply(_model(kind))
    recipe = RECIPES[name]()
    recipe.compile(model, learning_rate=1e-3)
    assert training_forward.is_installed(model)
    # The recipe's settings aside, the chunked step equals the full-logits step.
    _assert_same_step(model, _batch())


def test_overrides_and_none_keep_full_logits():
    model = _model("gemma")
    recipe = LoRA(rank=2, alpha=4)
    recipe.apply(model)
    recipe.compile(model, logits_chunk_size=None)
    assert not training_forward.is_installed(model)
    recipe.compile(model)
    assert training_forward.is_installed(model)
    recipe.compile(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert not training_forward.is_installed(model)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="chunk_size=0"):
        training_forward.install(_model("gemma"), chunk_size=0)
    with pytest.raises(ValueError, match="Received: model of type Sequential"):
        training_forward.install(keras.Sequential([keras.layers.Dense(2)]))
