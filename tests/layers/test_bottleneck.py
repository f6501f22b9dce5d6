import keras
import numpy as np
import pytest

from kerasft.layers.bottleneck import BottleneckAdapter
from tests.conftest import to_numpy
from tests.test_einsum import build_einsum
from tests.layers.test_lora import random_inputs

# attention_output and ffw_linear: the layers adapters follow in Gemma.
EQUATIONS = [("btnh,nhd->btd", (None, 16), None), ("btf,fd->btd", (None, 16), 32)]


def wrap(layer, **kwargs):
    wrapper = BottleneckAdapter(layer, **kwargs)
    wrapper.build()
    return wrapper


@pytest.mark.parametrize("equation,output_shape,input_dim", EQUATIONS)
def test_identity_at_init_then_residual_bottleneck(equation, output_shape, input_dim):
    layer = build_einsum(equation, output_shape, input_dim)
    x = random_inputs(input_dim)
    y = to_numpy(layer(x))
    wrapper = wrap(layer, bottleneck=4, activation="relu")
    np.testing.assert_array_equal(to_numpy(wrapper(x)), y)
    assert sum(int(np.prod(v.shape)) for v in wrapper.trainable_weights) == 2 * 16 * 4 + 4 + 16
    rng = np.random.default_rng(0)
    for v in wrapper.trainable_weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    down, down_bias, up, up_bias = (to_numpy(v) for v in
                                    (wrapper.down_kernel, wrapper.down_bias, wrapper.up_kernel, wrapper.up_bias))
    expected = y + np.maximum(y @ down + down_bias, 0) @ up + up_bias
    np.testing.assert_allclose(to_numpy(wrapper(x)), expected, atol=1e-4)


def test_is_not_mergeable():
    wrapper = wrap(build_einsum("btf,fd->btd", (None, 16), 32))
    assert wrapper.mergeable is False
    with pytest.raises(NotImplementedError):
        wrapper.merge()


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_float32_weights_under_bfloat16(policy):
    layer = keras.layers.EinsumDense("btf,fd->btd", output_shape=(None, 16), dtype=policy)
    layer.build((2, 3, 32))
    wrapper = wrap(layer, bottleneck=4)
    for v in wrapper.trainable_weights:
        assert keras.backend.standardize_dtype(v.dtype) == "float32"
    assert keras.backend.standardize_dtype(wrapper(random_inputs(32)).dtype) == "bfloat16"


@pytest.mark.parametrize(
    "kwargs,message",
    [({"bottleneck": 0}, "bottleneck=0"), ({"bottleneck": 2.5}, "bottleneck=2.5"),
     ({"activation": "nope"}, "activation='nope'")],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BottleneckAdapter(build_einsum("btf,fd->btd", (None, 16), 32), **kwargs)


def test_config_round_trip():
    config = BottleneckAdapter(build_einsum("btf,fd->btd", (None, 16), 32), bottleneck=3,
                               activation="relu", target_path="a/b").get_config()
    assert (config["bottleneck"], config["activation"], config["target_path"]) == (3, "relu", "a/b")
    assert keras.saving.get_registered_object("kerasft>BottleneckAdapter") is BottleneckAdapter
    assert BottleneckAdapter.from_config(config).bottleneck == 3
