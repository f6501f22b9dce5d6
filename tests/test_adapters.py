import json

import numpy as np
import pytest

import kerasft
from kerasft import testing
from kerasft.recipes import Freeze, LoRA
from kerasft.recipes.lora import lora_layers
from tests.conftest import to_numpy, weights_by_path


def trained_lora_model(kind, recipe, seed=0):
    model = testing.tiny_causal_lm(kind, seed=seed)
    recipe.apply(model)
    rng = np.random.default_rng(7)
    # Random adapter weights stand in for training: every tensor non-zero.
    for wrapper in lora_layers(model):
        wrapper.lora_b.assign(rng.normal(size=wrapper.lora_b.shape).astype("float32") * 0.1)
    return model


@pytest.mark.parametrize(
    "recipe",
    [
        LoRA(),
        LoRA(rank=3, alpha=5.0, targets=("ffw_linear",)),
        LoRA(rank=4, alpha=4.0, targets=("decoder_block_1*",), use_rslora=True),
    ],
    ids=["default", "ffw_linear-alpha", "glob-rslora"],
)
def test_save_then_load_into_a_fresh_model_gives_equal_outputs(model_kind, batch, recipe, tmp_path):
    model = trained_lora_model(model_kind, recipe)
    x, _, _ = batch
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["method"] == "lora"
    assert config["recipe"]["alpha"] == recipe.alpha
    assert config["recipe"]["use_rslora"] == recipe.use_rslora
    assert config["target_paths"] == [w.target_path for w in lora_layers(model)]

    fresh = testing.tiny_causal_lm(model_kind)
    kerasft.load_adapter(fresh, tmp_path)
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)


def test_loading_into_a_different_base_names_the_difference(tmp_path):
    model = trained_lora_model("gemma3", LoRA())
    kerasft.save_adapter(model, tmp_path)
    other = testing.tiny_causal_lm("gemma3", num_layers=3)
    with pytest.raises(ValueError, match="num_layers: adapter base has 2, this model has 3"):
        kerasft.load_adapter(other, tmp_path)


def test_a_file_with_a_missing_tensor_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = trained_lora_model("gemma", LoRA())
    kerasft.save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter.safetensors"))
    tensors.pop("decoder_block_1/attention/value/lora_b")
    save_file(tensors, str(tmp_path / "adapter.safetensors"))
    with pytest.raises(ValueError, match="decoder_block_1/attention/value/lora_b"):
        kerasft.load_adapter(testing.tiny_causal_lm("gemma"), tmp_path)


def test_merge_equals_unmerged_and_twice_changes_nothing(model_kind, batch):
    model = trained_lora_model(model_kind, LoRA(rank=4, targets=("attention", "mlp")))
    x, _, _ = batch
    expected = to_numpy(model(x))
    merged = kerasft.merge_adapters(model)
    assert len(merged) == 14
    assert not lora_layers(model)
    assert not any("lora" in v.path for v in model.weights)
    np.testing.assert_allclose(to_numpy(model(x)), expected, atol=1e-5)
    weights = weights_by_path(model)
    assert kerasft.merge_adapters(model) == []
    for path, value in weights_by_path(model).items():
        np.testing.assert_array_equal(value, weights[path])


def test_a_fresh_lora_after_merging_starts_trainable(batch):
    model = trained_lora_model("gemma3", LoRA())
    kerasft.merge_adapters(model)
    LoRA().apply(model)
    for wrapper in lora_layers(model):
        assert np.abs(to_numpy(wrapper.lora_a)).max() > 0
        assert np.abs(to_numpy(wrapper.lora_b)).max() == 0


def test_freeze_recipe_saves_and_loads_its_trained_block(batch, tmp_path):
    model = testing.tiny_causal_lm("gemma3")
    Freeze(trainable=[-1]).apply(model)
    for v in model.trainable_weights:
        v.assign(to_numpy(v) + 0.5)
    x, _, _ = batch
    expected = to_numpy(model(x))
    kerasft.save_adapter(model, tmp_path)
    fresh = testing.tiny_causal_lm("gemma3")
    kerasft.load_adapter(fresh, tmp_path)
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)


def test_saving_without_a_recipe_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no kerasft recipe"):
        kerasft.save_adapter(testing.tiny_causal_lm("gemma"), tmp_path)
