"""A new method plugs in from outside the library (issue 12's acceptance test).

The method (a learned per-output-channel gain on dense layers, mergeable
into the kernel) is defined here, in the test file, from public pieces only:
`AdapterWrapper`, `WrapperRecipe`, `register_recipe`. It then trains, saves,
reloads onto a fresh base and merges through the ordinary
`save_adapter` / `load_adapter` / `recipe.merge`, with no library file that
names it.
"""

import json

import keras
import numpy as np
from keras import ops

import kerasft
from kerasft import testing
from kerasft.einsum import kernel_axes
from kerasft.layers.wrapper import AdapterWrapper
from kerasft.recipes.base import register_recipe
from kerasft.recipes.wrapper_recipe import WrapperRecipe
from kerasft.targeting import adapter_wrappers, kernel_variable, normalize_targets
from tests.conftest import to_numpy, weights_by_path


@keras.saving.register_keras_serializable(package="kerasft_tests")
class ChannelGainDense(AdapterWrapper):
    """`layer(x) * (1 + gain)`, `gain` over the kernel's output features (zeros at first)."""

    mergeable = True

    def __init__(self, layer, target_path=None, **kwargs):
        kwargs.setdefault("name", f"{layer.name}_gain")
        super().__init__(layer, target_path=target_path, **kwargs)
        self.axes = kernel_axes(layer)

    def build(self, input_shape=None):
        self.gain = self.add_weight(
            name="gain", shape=self.axes.shape_of(self.axes.fan_out_letters), initializer="zeros"
        )
        self.built = True

    def factor(self):
        return 1.0 + ops.cast(self.gain, "float32")

    def call(self, inputs):
        outputs = self.layer(inputs)
        if self.merged:
            return outputs
        letters, fan_out = self.axes.output_letters, self.axes.fan_out_letters
        factor = ops.cast(self.factor(), outputs.dtype)
        return ops.einsum(f"{letters},{fan_out}->{letters}", outputs, factor)

    def merge(self):
        if self.merged:
            return False
        kernel = kernel_variable(self.layer)
        letters, fan_out = self.axes.kernel_letters, self.axes.fan_out_letters
        scaled = ops.einsum(f"{letters},{fan_out}->{letters}", ops.cast(kernel, "float32"),
                            self.factor())
        kernel.assign(ops.cast(scaled, kernel.dtype))
        self.merged = True
        return True


@register_recipe("toy_channel_gain")
class ChannelGain(WrapperRecipe):
    """A per-output-channel gain on the targeted dense layers; everything else frozen."""

    def __init__(self, targets=("query", "ffw_linear")):
        self.targets = normalize_targets(targets)

    def make_wrapper(self, path, layer):
        return ChannelGainDense(layer, target_path=path)

    def get_config(self):
        return {"method": self.method, "targets": list(self.targets)}


def test_a_method_defined_outside_the_library_trains_saves_loads_and_merges(
    model_kind, batch, tmp_path
):
    x, y, w = batch
    model = testing.tiny_causal_lm(model_kind)
    base_output = to_numpy(model(x))
    recipe = ChannelGain()
    recipe.apply(model)
    wrappers = adapter_wrappers(model, ChannelGainDense)
    targets = sorted(w_.target_path for w_ in wrappers)
    assert targets == [
        f"decoder_block_{i}/{name}" for i in (0, 1) for name in ("attention/query", "ffw_linear")
    ]
    np.testing.assert_allclose(to_numpy(model(x)), base_output, atol=1e-6)
    gains = {v.path for w_ in wrappers for v in w_.adapter_weights().values()}
    assert {v.path for v in model.trainable_variables} == gains

    before = weights_by_path(model)
    recipe.compile(model, learning_rate=1e-2)
    model.fit(x, y, sample_weight=w, batch_size=len(x["token_ids"]), epochs=1, verbose=0)
    after = weights_by_path(model)
    for path, value in before.items():
        if path in gains:
            assert not np.array_equal(after[path], value), f"{path} did not train"
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)
    trained_output = to_numpy(model(x))
    assert not np.allclose(trained_output, base_output, atol=1e-6)

    kerasft.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "kerasft_adapter.json").read_text())
    assert config["method"] == "toy_channel_gain"
    assert sorted(config["target_paths"]) == targets
    # Keyed by the path of the layer each gain changes, as every method's weights.
    assert sorted(config["weights_sha256"]) == [f"{path}/gain" for path in targets]

    fresh = kerasft.load_adapter(testing.tiny_causal_lm(model_kind), tmp_path)
    np.testing.assert_allclose(to_numpy(fresh(x)), trained_output, atol=1e-6)

    report = ChannelGain().merge(fresh, batch=x)
    assert sorted(report["merged"]) == targets
    assert report["max_abs_logit_difference"] < 1e-5
    assert not adapter_wrappers(fresh)
    assert not any("gain" in v.path for v in fresh.weights)
    np.testing.assert_allclose(to_numpy(fresh(x)), trained_output, atol=1e-5)
    weights = weights_by_path(fresh)
    assert ChannelGain().merge(fresh) == {"merged": [], "max_abs_logit_difference": None}
    for path, value in weights_by_path(fresh).items():
        np.testing.assert_array_equal(value, weights[path])
