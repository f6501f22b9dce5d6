import keras
import numpy as np
import pytest

from kerasft import testing
from kerasft.adapters import load_adapter, read_adapter_config, save_adapter
from kerasft.recipes import Classifier, LoRA, recipe_from_config
from kerasft.recipes.lora import lora_layers
from tests.conftest import to_numpy, weights_by_path

LABELS = np.array([0, 1, 2, 1, 0, 2, 2, 1], dtype="int32")


def classification_batch(left_pad_row=None):
    """8 rows of random tokens, rows of different lengths (right-padded)."""
    x, _, _ = testing.random_token_batch(batch_size=8, sequence_length=10, seed=3, pad_last=0)
    lengths = np.array([10, 7, 3, 10, 1, 5, 9, 2])
    mask = np.arange(10)[None, :] < lengths[:, None]
    if left_pad_row is not None:
        mask[left_pad_row] = mask[left_pad_row][::-1]
    return {"token_ids": np.where(mask, x["token_ids"], 0), "padding_mask": mask}


def fit(recipe, model, epochs=8):
    recipe.compile(model, learning_rate=3e-2)
    history = model.fit(classification_batch(), LABELS, batch_size=8, epochs=epochs, verbose=0)
    return history.history["loss"]


def test_head_only_trains_the_head_and_nothing_else(model_kind):
    causal_lm = testing.tiny_causal_lm(model_kind)
    recipe = Classifier(num_classes=3)
    model = recipe.apply(causal_lm)
    assert [v.path for v in model.trainable_weights] == ["classifier_head/kernel", "classifier_head/bias"]
    assert model.head.kernel.dtype == "float32"
    before = weights_by_path(model)
    losses = fit(recipe, model)
    assert losses[-1] < losses[0] - 0.05
    after = weights_by_path(model)
    for path, value in before.items():
        if path.startswith("classifier_head/"):
            assert not np.array_equal(after[path], value), f"{path} did not train"
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_head_and_lora_train_the_head_and_adapters_only():
    causal_lm = testing.tiny_causal_lm("gemma3")
    recipe = Classifier(3, pooling="mean", base=LoRA(rank=2, alpha=4))
    model = recipe.apply(causal_lm)
    trained = {v.path for v in model.trainable_weights}
    adapters = {v.path for w in lora_layers(model) for v in (w.lora_a, w.lora_b)}
    assert len(adapters) == 8  # query and value of two blocks
    assert trained == adapters | {"classifier_head/kernel", "classifier_head/bias"}
    before = weights_by_path(model)
    losses = fit(recipe, model)
    assert losses[-1] < losses[0] - 0.05
    after = weights_by_path(model)
    for path, value in before.items():
        if path in trained and not path.endswith("lora_a"):
            # lora_a gets no gradient while lora_b is zero on the first step,
            # but every lora_b and the head must move.
            assert not np.array_equal(after[path], value), f"{path} did not train"
        elif path not in trained:
            np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert any(not np.array_equal(after[p], before[p]) for p in adapters if p.endswith("lora_a"))


def test_train_all_and_train_head_modes():
    model = Classifier(3, train="all").apply(testing.tiny_causal_lm("gemma3"))
    assert len(model.trainable_weights) == len(model.weights)
    model = Classifier(3, base=LoRA(rank=2), train="head").apply(testing.tiny_causal_lm("gemma3"))
    assert [v.path for v in model.trainable_weights] == ["classifier_head/kernel", "classifier_head/bias"]


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_pooling_matches_numpy_on_backbone_hidden_states(pooling):
    causal_lm = testing.tiny_causal_lm("gemma3")
    model = Classifier(3, pooling=pooling, activation=None).apply(causal_lm)
    x = classification_batch(left_pad_row=2)
    hidden = to_numpy(model.backbone(x)).astype("float64")
    mask = x["padding_mask"]
    if pooling == "mean":
        expected = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    else:
        last = np.array([np.flatnonzero(row).max() for row in mask])
        expected = hidden[np.arange(len(mask)), last]
    pooled_model = keras.Model(model.inputs, model.get_layer("classifier_pooling").output)
    np.testing.assert_allclose(to_numpy(pooled_model(x)), expected, rtol=1e-6, atol=1e-6)
    if pooling == "last_token":
        np.testing.assert_array_equal(to_numpy(pooled_model(x)), expected.astype("float32"))
    kernel, bias = to_numpy(model.head.kernel), to_numpy(model.head.bias)
    np.testing.assert_allclose(to_numpy(model(x)), expected @ kernel + bias, rtol=1e-5, atol=1e-6)


def test_outputs_are_probabilities_equal_to_softmax_of_logits():
    x = classification_batch()
    probabilities = to_numpy(Classifier(3).apply(testing.tiny_causal_lm("gemma3")).predict(x, verbose=0))
    logits = to_numpy(Classifier(3, activation=None).apply(testing.tiny_causal_lm("gemma3"))(x))
    assert probabilities.shape == (8, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6)
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probabilities, softmax / softmax.sum(-1, keepdims=True), atol=1e-6)


def test_bfloat16_backbone_gives_float32_head_and_outputs():
    model = Classifier(3).apply(testing.tiny_causal_lm("gemma3", dtype="bfloat16"))
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in model.trainable_weights)
    assert keras.backend.standardize_dtype(model(classification_batch()).dtype) == "float32"


@pytest.mark.parametrize("base", [
    None,
    {"method": "lora", "rank": 2, "targets": ["decoder_block_1*/attention/*"]},
    {"method": "qlora", "rank": 2, "group_size": 16, "residual_rank": 2,
     "targets": ["decoder_block_1*/attention/*"]},
], ids=["head", "lora", "qlora-residual"])
def test_save_and_load_into_a_fresh_model_gives_equal_outputs(tmp_path, monkeypatch, base):
    recipe = Classifier(3, base=base)
    model = recipe.apply(testing.tiny_causal_lm("gemma3"))
    fit(recipe, model, epochs=2)
    x = classification_batch()
    expected = to_numpy(model(x))
    save_adapter(model, tmp_path)
    config = read_adapter_config(tmp_path)
    assert config["method"] == "classifier"
    assert config["recipe"] == recipe.get_config()
    fresh = testing.tiny_causal_lm("gemma3")  # same base weights (seed 0), new head
    assert not np.allclose(to_numpy(Classifier(3, base=base).apply(testing.tiny_causal_lm("gemma3"))(x)), expected)
    # A QLoRA base's fitted correction comes from the file, never refitted.
    monkeypatch.setattr(
        "kerasft.recipes.qlora.low_rank_residual",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("refitted on load")),
    )
    restored = load_adapter(fresh, tmp_path)
    np.testing.assert_array_equal(to_numpy(restored(x)), expected)
    saved = {v.path for v in model.trainable_weights}
    assert {v.path for v in restored.trainable_weights} == saved


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_classes": 1}, "num_classes=1"),
        ({"num_classes": 3, "pooling": "max"}, "pooling='max'"),
        ({"num_classes": 3, "train": "adapters"}, "train='adapters'"),
        ({"num_classes": 3, "activation": "sigmoid"}, "activation='sigmoid'"),
        ({"num_classes": 3, "base": "lora"}, "base='lora'"),
        ({"num_classes": 3, "base": {"method": "classifier", "num_classes": 2}}, "base=Classifier"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Classifier(**kwargs)


def test_config_round_trip_with_a_nested_recipe():
    recipe = Classifier(5, pooling="mean", base=LoRA(rank=4, targets="attention"), dropout=0.1)
    rebuilt = recipe_from_config(recipe.get_config())
    assert isinstance(rebuilt.base, LoRA)
    assert rebuilt.get_config() == recipe.get_config()

