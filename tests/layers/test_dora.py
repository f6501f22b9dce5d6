import keras
import numpy as np
import pytest

from kerasft.layers.dora import DoRADense
from tests.conftest import to_numpy
from tests.test_einsum import GEMMA_EQUATIONS, build_einsum
from tests.layers.test_lora import random_inputs


def wrap(layer, **kwargs):
    wrapper = DoRADense(layer, **kwargs)
    wrapper.build()
    return wrapper


def randomize(wrapper, seed=1):
    rng = np.random.default_rng(seed)
    wrapper.lora_b.assign(rng.normal(size=wrapper.lora_b.shape).astype("float32") * 0.3)
    wrapper.magnitude.assign(to_numpy(wrapper.magnitude) * rng.uniform(0.5, 1.5, wrapper.magnitude.shape))


def reference_kernel(wrapper):
    """`m * V / ||V||` written out with numpy on the (fan_in, fan_out) matrix."""
    axes = wrapper.axes
    order = axes.fan_in_letters + axes.fan_out_letters
    kernel = np.transpose(to_numpy(wrapper.layer._kernel), [axes.kernel_letters.index(c) for c in order])
    w = kernel.reshape(axes.fan_in, axes.fan_out)
    a = to_numpy(wrapper.lora_a).reshape(axes.fan_in, -1)
    b = to_numpy(wrapper.lora_b).reshape(-1, axes.fan_out)
    v = w + wrapper.scale * a @ b
    merged = v * to_numpy(wrapper.magnitude).reshape(1, -1) / np.linalg.norm(v, axis=0, keepdims=True)
    merged = merged.reshape(kernel.shape)
    return np.transpose(merged, [order.index(c) for c in axes.kernel_letters])


@pytest.mark.parametrize("equation,output_shape,input_dim,fan_in,fan_out", GEMMA_EQUATIONS)
def test_starts_as_identity_with_magnitude_the_column_norms(equation, output_shape, input_dim, fan_in, fan_out):
    layer = build_einsum(equation, output_shape, input_dim)
    x = random_inputs(input_dim)
    expected = to_numpy(layer(x))
    wrapper = wrap(layer, rank=3)
    np.testing.assert_allclose(to_numpy(wrapper(x)), expected, atol=1e-6)
    assert sum(int(np.prod(v.shape)) for v in wrapper.trainable_weights) == 3 * (fan_in + fan_out) + fan_out
    assert int(np.prod(wrapper.magnitude.shape)) == fan_out


@pytest.mark.parametrize("equation,output_shape,input_dim,fan_in,fan_out", GEMMA_EQUATIONS)
def test_output_and_merge_equal_the_decomposed_kernel(equation, output_shape, input_dim, fan_in, fan_out):
    layer = build_einsum(equation, output_shape, input_dim)
    wrapper = wrap(layer, rank=4, alpha=6.0)
    randomize(wrapper)
    kernel = reference_kernel(wrapper)
    reference = build_einsum(equation, output_shape, input_dim)
    reference._kernel.assign(kernel)
    x = random_inputs(input_dim)
    expected = to_numpy(reference(x))
    np.testing.assert_allclose(to_numpy(wrapper(x)), expected, atol=1e-5)
    assert wrapper.merge() is True
    np.testing.assert_allclose(to_numpy(layer._kernel), kernel, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)
    merged = to_numpy(layer._kernel).copy()
    assert wrapper.merge() is False
    np.testing.assert_array_equal(to_numpy(layer._kernel), merged)


def test_dense_layer_with_bias():
    layer = keras.layers.Dense(5)
    layer.build((None, 7))
    layer.bias.assign(np.arange(5, dtype="float32"))
    wrapper = wrap(layer, rank=2)
    x = np.random.default_rng(0).normal(size=(3, 7)).astype("float32")
    np.testing.assert_allclose(to_numpy(wrapper(x)), to_numpy(layer(x)), atol=1e-6)
    randomize(wrapper)
    before = to_numpy(wrapper(x))
    wrapper.merge()
    np.testing.assert_allclose(to_numpy(layer(x)), before, atol=1e-5)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_float32_weights_and_identity_under_bfloat16(policy):
    layer = keras.layers.EinsumDense("btd,df->btf", output_shape=(None, 32), dtype=policy)
    layer.build((2, 3, 16))
    wrapper = wrap(layer, rank=4)
    for v in wrapper.trainable_weights:
        assert keras.backend.standardize_dtype(v.dtype) == "float32"
    x = random_inputs(16)
    out = wrapper(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_array_equal(to_numpy(keras.ops.cast(out, "float32")),
                                  to_numpy(keras.ops.cast(layer(x), "float32")))


def test_activation_is_refused():
    layer = keras.layers.Dense(4, activation="relu")
    layer.build((None, 3))
    with pytest.raises(ValueError, match="activation='relu'"):
        DoRADense(layer)


@pytest.mark.parametrize("kwargs,message", [({"rank": 0}, "rank=0"), ({"alpha": -1.0}, "alpha=-1.0")])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DoRADense(build_einsum("btd,df->btf", (None, 32), 16), **kwargs)


def test_config_round_trip():
    layer = build_einsum("btd,df->btf", (None, 32), 16)
    config = DoRADense(layer, rank=5, alpha=7.0, use_rslora=True, target_path="a/b").get_config()
    assert (config["rank"], config["alpha"], config["use_rslora"], config["target_path"]) == (5, 7.0, True, "a/b")
    assert keras.saving.get_registered_object("kerasft>DoRADense") is DoRADense
    restored = DoRADense.from_config(config)
    assert restored.rank == 5 and restored.layer.equation == "btd,df->btf"
