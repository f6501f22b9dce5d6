import keras
import numpy as np
import pytest

from kerasft import load_adapter, merge_adapters, save_adapter, testing
from kerasft.quantization import QuantizedEinsumDense, quantize_model
from kerasft.recipes import QLoRA
from kerasft.recipes.lora import lora_layers
from kerasft.targeting import iter_layers
from tests.conftest import to_numpy, weights_by_path


def quantized_layers(model):
    return [layer for layer in iter_layers(model) if isinstance(layer, QuantizedEinsumDense)]


@pytest.mark.parametrize("quantization", ["nf4", "int4", "int8"])
def test_init_outputs_equal_the_quantized_model(model_kind, batch, quantization):
    x, _, _ = batch
    reference = testing.tiny_causal_lm(model_kind)
    quantize_model(reference, quantization, group_size=16, double_quantize=True)
    model = testing.tiny_causal_lm(model_kind)
    float_logits = to_numpy(model(x))
    QLoRA(rank=4, quantization=quantization, group_size=16).apply(model)
    assert len(quantized_layers(model)) == 14  # 7 kernels x 2 blocks
    assert all(isinstance(w.layer, QuantizedEinsumDense) for w in lora_layers(model))
    logits = to_numpy(model(x))
    np.testing.assert_array_equal(logits, to_numpy(reference(x)))
    assert not np.allclose(logits, float_logits, atol=1e-6)
    for variable in model.trainable_weights:
        assert keras.backend.standardize_dtype(variable.dtype) == "float32"


def test_fit_moves_only_adapters_and_keeps_codes_bit_identical(batch, tmp_path):
    model = testing.tiny_causal_lm("gemma3")
    x, y, w = batch
    recipe = QLoRA(rank=4, alpha=8, group_size=16, targets=("query", "value", "ffw_linear"))
    recipe.apply(model)
    adapter_paths = {v.path for v in model.trainable_weights}
    assert len(adapter_paths) == 2 * 3 * 2
    before = weights_by_path(model)
    recipe.compile(model, learning_rate=1e-2)
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] - 0.05
    after = weights_by_path(model)
    for path, value in before.items():
        if path in adapter_paths:
            assert not np.array_equal(after[path], value), f"{path} did not train"
        else:  # codes, scales, norms, embeddings
            np.testing.assert_array_equal(after[path], value, err_msg=path)

    # Save, then reload onto a fresh float base: RTN rebuilds the same codes.
    expected = to_numpy(model(x))
    save_adapter(model, tmp_path / "qlora")
    fresh = testing.tiny_causal_lm("gemma3")
    load_adapter(fresh, tmp_path / "qlora")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)
    reloaded = weights_by_path(fresh)
    for path, value in after.items():
        np.testing.assert_array_equal(reloaded[path], value, err_msg=path)


def trained_qlora_model(batch, **kwargs):
    model = testing.tiny_causal_lm("gemma")
    x, y, w = batch
    recipe = QLoRA(rank=4, alpha=8, group_size=8, targets=("query", "ffw_gating"), **kwargs)
    recipe.apply(model)
    recipe.compile(model, learning_rate=2e-2)
    model.fit(x, y, sample_weight=w, batch_size=4, epochs=1, verbose=0)
    return model


def test_float_merge_is_exact_and_requantized_merge_reports_the_difference(batch):
    x, _, _ = batch
    model = trained_qlora_model(batch)
    adapter_logits = to_numpy(model(x))
    result = QLoRA().merge(model, batch=x)
    assert sorted(result["merged"]) == [
        f"decoder_block_{i}/{name}" for i in (0, 1)
        for name in ("attention/query", "ffw_gating")
    ]
    assert result["max_abs_logit_difference"] < 1e-4
    np.testing.assert_allclose(to_numpy(model(x)), adapter_logits, atol=1e-4)
    assert not lora_layers(model)
    merged_paths = {layer.path for layer in iter_layers(model)
                    if isinstance(layer, keras.layers.EinsumDense)}
    assert set(result["merged"]) <= merged_paths
    assert len(quantized_layers(model)) == 14 - 4

    model = trained_qlora_model(batch)
    with pytest.warns(UserWarning, match="requantizes"):
        result = QLoRA().merge(model, requantize=True, batch=x)
    assert len(quantized_layers(model)) == 14
    assert 0 < result["max_abs_logit_difference"] < 1.0


def test_generic_merge_adapters_warns_that_it_requantizes(batch):
    model = trained_qlora_model(batch)
    with pytest.warns(UserWarning, match="requantizes"):
        merged = merge_adapters(model)
    assert len(merged) == 4 and len(quantized_layers(model)) == 14


def test_quantize_targets_and_bad_arguments(batch):
    model = testing.tiny_causal_lm("gemma3")
    QLoRA(rank=2, targets=("value",), quantization="int4", group_size=8,
          double_quant=False, quantize_targets=["ffw_*"]).apply(model)
    assert {layer.name for layer in quantized_layers(model)} == {
        "ffw_gating", "ffw_gating_2", "ffw_linear"
    }
    assert not any(isinstance(w.layer, QuantizedEinsumDense) for w in lora_layers(model))
    with pytest.raises(ValueError, match="mode='int2'"):
        QLoRA(quantization="int2")
    with pytest.raises(ValueError, match="group_size=64"):
        QLoRA(group_size=64).apply(testing.tiny_causal_lm("gemma3"))


def float_and_quantized_kernels(model):
    """`{target path: (W, Q + scale * A @ B)}` as `(K, N)` matrices."""
    pairs = {}
    for wrapper in lora_layers(model):
        layer = wrapper.layer
        quantized = layer.dequantized_kernel("float32") + wrapper.delta_kernel()
        pairs[wrapper.target_path] = layer.kernel_matrix(to_numpy(quantized))
    return pairs


@pytest.mark.parametrize("quantization", ["nf4", "int4"])
def test_residual_init_starts_closer_to_the_float_model(model_kind, batch, quantization):
    x, _, _ = batch
    float_model = testing.tiny_causal_lm(model_kind)
    float_logits = to_numpy(float_model(x))
    float_kernels = {
        layer.path: layer for layer in iter_layers(float_model)
        if isinstance(layer, keras.layers.EinsumDense)
    }
    logits, kernels = {}, {}
    for init in ("zeros", "residual"):
        model = testing.tiny_causal_lm(model_kind)
        recipe = QLoRA(rank=4, group_size=16, quantization=quantization, init=init)
        recipe.apply(model)
        logits[init] = to_numpy(model(x))
        kernels[init] = float_and_quantized_kernels(model)
    # Every adapted kernel is nearer W; rank 4 of 16 contracted rows.
    for path, start in kernels["residual"].items():
        layer = adapted_layer(model, path)
        w = layer.kernel_matrix(to_numpy(float_kernels[path].kernel))
        zero_error = np.linalg.norm(w - kernels["zeros"][path])
        assert np.linalg.norm(w - start) < 0.95 * zero_error, path
    for path, (before, after) in recipe.initialization_report.items():
        assert after < before, path
    zero_gap = np.abs(logits["zeros"] - float_logits).mean()
    residual_gap = np.abs(logits["residual"] - float_logits).mean()
    assert residual_gap < 0.9 * zero_gap


def adapted_layer(model, path):
    return next(w.layer for w in lora_layers(model) if w.target_path == path)


def test_calibrated_residual_init_weights_the_calibration_activations(batch):
    x, _, _ = batch
    calibration = [testing.random_token_batch(seed=s)[0] for s in range(1, 4)]
    outputs = {}
    for data in (None, calibration):
        model = testing.tiny_causal_lm("gemma3")
        recipe = QLoRA(rank=2, group_size=16, targets=("query", "ffw_linear"), init="residual")
        recipe.apply(model, calibration_data=data)
        outputs[data is None] = recipe.initialization_report
    for path, (before, calibrated) in outputs[False].items():
        # The report of the calibrated run is the output error on the
        # calibration activations, which the weighted factors minimise.
        assert calibrated < before, path
    assert set(outputs[False]) == set(outputs[True])
    with pytest.raises(ValueError, match="init='zeros'"):
        QLoRA(group_size=16).apply(testing.tiny_causal_lm("gemma3"), calibration_data=calibration)
    with pytest.raises(ValueError, match="init='loftq'"):
        QLoRA(init="loftq")


def test_residual_init_trains_saves_and_reloads_without_recomputing(batch, tmp_path, monkeypatch):
    x, y, w = batch
    model = testing.tiny_causal_lm("gemma")
    recipe = QLoRA(rank=4, alpha=8, group_size=16, init="residual")
    recipe.apply(model, calibration_data=[x])
    start = weights_by_path(model)
    recipe.compile(model, learning_rate=1e-2)
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    adapter_paths = {v.path for v in model.trainable_weights}
    for path, value in weights_by_path(model).items():
        if path not in adapter_paths:
            np.testing.assert_array_equal(value, start[path], err_msg=path)
    expected = to_numpy(model(x))
    save_adapter(model, tmp_path / "residual")

    def fail(*args, **kwargs):
        raise AssertionError("load_adapter recomputed the residual factors")

    monkeypatch.setattr("kerasft.recipes.qlora.low_rank_residual", fail)
    fresh = testing.tiny_causal_lm("gemma")
    load_adapter(fresh, tmp_path / "residual")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)
    from kerasft.recipes.base import applied_recipe_config

    assert applied_recipe_config(fresh)["init"] == "residual"


def test_frozen_residual_correction_trains_merges_and_reloads(batch, tmp_path, monkeypatch):
    x, y, w = batch
    plain = testing.tiny_causal_lm("gemma3")
    QLoRA(rank=4, group_size=16).apply(plain)
    float_logits = to_numpy(testing.tiny_causal_lm("gemma3")(x))

    model = testing.tiny_causal_lm("gemma3")
    recipe = QLoRA(rank=4, alpha=8, group_size=16, residual_rank=4)
    recipe.apply(model, calibration_data=[x])
    wrappers = lora_layers(model)
    assert all(wrapper.residual_rank == 4 for wrapper in wrappers)
    for wrapper in wrappers:  # the adapter itself starts at zero
        assert not np.any(to_numpy(wrapper.lora_b))
        assert np.any(to_numpy(wrapper.residual_b))
    for path, (before, after) in recipe.initialization_report.items():
        assert after < 0.95 * before, path
    logits = to_numpy(model(x))
    plain_gap = np.abs(to_numpy(plain(x)) - float_logits).mean()
    assert np.abs(logits - float_logits).mean() < 0.9 * plain_gap
    trainable = {v.path for v in model.trainable_weights}
    assert trainable and not any("residual" in path for path in trainable)

    start = weights_by_path(model)
    recipe.compile(model, learning_rate=1e-2)
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    for path, value in weights_by_path(model).items():
        if path in trainable:
            assert not np.array_equal(value, start[path]), path
        else:  # codes, scales and the residual factors
            np.testing.assert_array_equal(value, start[path], err_msg=path)

    expected = to_numpy(model(x))
    save_adapter(model, tmp_path / "residual")
    monkeypatch.setattr(
        "kerasft.recipes.qlora.low_rank_residual",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")),
    )
    fresh = testing.tiny_causal_lm("gemma3")
    load_adapter(fresh, tmp_path / "residual")
    np.testing.assert_array_equal(to_numpy(fresh(x)), expected)

    result = QLoRA().merge(fresh, batch=x)
    assert result["max_abs_logit_difference"] < 1e-4
    with pytest.warns(UserWarning, match="requantizes"):
        result = QLoRA().merge(model, requantize=True, batch=x)
    assert 0 < result["max_abs_logit_difference"] < 1.0
    with pytest.raises(ValueError, match="residual_rank=-1"):
        QLoRA(residual_rank=-1)


def test_quantized_embedding_stays_frozen_and_reloads(batch, tmp_path):
    from kerasft.quantization import QuantizedEmbedding

    x, y, w = batch
    model = testing.tiny_causal_lm("gemma")
    recipe = QLoRA(rank=2, group_size=16, targets=("query",), quantize_embedding=True)
    recipe.apply(model)
    assert isinstance(model.backbone.token_embedding, QuantizedEmbedding)
    start = weights_by_path(model)
    recipe.compile(model, learning_rate=1e-2)
    model.fit(x, y, sample_weight=w, batch_size=4, epochs=1, verbose=0)
    after = weights_by_path(model)
    for path in ("token_embedding/embeddings_codes", "token_embedding/embeddings_scale"):
        np.testing.assert_array_equal(after[path], start[path])
    save_adapter(model, tmp_path / "qlora")
    fresh = testing.tiny_causal_lm("gemma")
    load_adapter(fresh, tmp_path / "qlora")
    np.testing.assert_array_equal(to_numpy(fresh(x)), to_numpy(model(x)))


@pytest.mark.parametrize("argument", ["double_quant", "quantize_embedding", "use_rslora"])
def test_qlora_flags_must_be_booleans(argument):
    # bool("false") is True: a YAML/CLI string used to turn the option on.
    with pytest.raises(ValueError, match=rf"`{argument}` must be True or False. Received: {argument}='false'"):
        QLoRA(**{argument: "false"})
    assert getattr(QLoRA(**{argument: np.bool_(False)}), argument) is False


def test_qlora_rank_pattern_matching_no_target_is_refused_before_quantizing():
    model = testing.tiny_causal_lm("gemma3")
    with pytest.raises(ValueError, match=r"rank_pattern key 'ffw_\*' matches no target"):
        QLoRA(rank=2, targets=["query"], group_size=16, rank_pattern={"ffw_*": 4}).apply(model)
    assert not quantized_layers(model)


def test_qlora_accepts_numpy_integer_ranks():
    recipe = QLoRA(rank=np.int64(4), residual_rank=np.int64(2))
    assert (recipe.get_config()["rank"], recipe.get_config()["residual_rank"]) == (4, 2)
    assert type(recipe.get_config()["residual_rank"]) is int


def test_merge_options_are_checked(batch):
    model = trained_qlora_model(batch)
    QLoRA().check_merge_options({"requantize": False})
    with pytest.raises(ValueError, match=r"QLoRA\.merge takes the options \['requantize'\].*requantise=True"):
        QLoRA().check_merge_options({"requantise": True})
    with pytest.raises(TypeError, match="requantise"):
        QLoRA().merge(model, requantise=True)
    assert lora_layers(model)  # nothing merged
