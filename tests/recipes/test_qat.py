import numpy as np
import pytest

from kerasft import testing
from kerasft.quantization import QuantizedEinsumDense
from kerasft.recipes import QAT, recipe_from_config
from kerasft.recipes.qat import fake_quant_layers
from kerasft.targeting import iter_layers
from tests.conftest import to_numpy, weights_by_path


@pytest.mark.parametrize("model_kind,mode", [("gemma", "int4"), ("gemma3", "nf4")])
def test_fit_trains_kernels_through_fake_quant_and_convert_is_exact(model_kind, batch, mode):
    model = testing.tiny_causal_lm(model_kind)
    x, y, w = batch
    recipe = QAT(mode=mode, group_size=8, targets="attention")
    recipe.apply(model)
    wrappers = fake_quant_layers(model)
    assert len(wrappers) == 8
    kernel_paths = {v.path for v in model.trainable_weights}
    assert kernel_paths == {wrapper.layer._kernel.path for wrapper in wrappers}
    before = weights_by_path(model)
    recipe.compile(model, learning_rate=3e-2)
    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = weights_by_path(model)
    for path, value in before.items():
        if path in kernel_paths:
            assert not np.array_equal(after[path], value), f"{path} did not train"
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)

    fake_logits = to_numpy(model(x))
    converted = recipe.convert(model)
    assert len(converted) == 8 and not fake_quant_layers(model)
    quantized = [layer for layer in iter_layers(model) if isinstance(layer, QuantizedEinsumDense)]
    assert sorted(layer.path for layer in quantized) == sorted(converted)
    np.testing.assert_allclose(to_numpy(model(x)), fake_logits, rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_bad_group_size():
    recipe = QAT(mode="nf4", group_size=16, targets=("query",))
    assert recipe_from_config(recipe.get_config()).get_config() == recipe.get_config()
    model = testing.tiny_causal_lm("gemma3")
    with pytest.raises(ValueError, match="group_size=64"):
        QAT(mode="int4", group_size=64).apply(model)
    with pytest.raises(ValueError, match="mode='fp4'"):
        QAT(mode="fp4")


def test_merge_is_the_conversion_and_merge_adapters_converts_too(batch):
    import kerasft

    x, _, _ = batch
    for merge in ("verb", "merge_adapters"):
        model = testing.tiny_causal_lm("gemma3")
        recipe = QAT(mode="int8", group_size=None, targets=("query", "value"))
        recipe.apply(model)
        fake_logits = to_numpy(model(x))
        if merge == "verb":
            report = recipe.merge(model, batch=x)
            assert report["max_abs_logit_difference"] < 1e-4
            paths = report["merged"]
        else:
            paths = kerasft.merge_adapters(model)
        assert len(paths) == 4 and not fake_quant_layers(model), merge
        quantized = [layer.path for layer in iter_layers(model)
                     if isinstance(layer, QuantizedEinsumDense)]
        assert sorted(quantized) == sorted(paths)
        np.testing.assert_allclose(to_numpy(model(x)), fake_logits, rtol=1e-5, atol=1e-5)
