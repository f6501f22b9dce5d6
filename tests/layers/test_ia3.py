import keras
import numpy as np
import pytest

from kerasft.layers.ia3 import IA3Dense
from tests.conftest import to_numpy
from tests.test_einsum import GEMMA_EQUATIONS, build_einsum
from tests.layers.test_lora import random_inputs


def wrap(layer, **kwargs):
    wrapper = IA3Dense(layer, **kwargs)
    wrapper.build()
    return wrapper


@pytest.mark.parametrize("side", ["output", "input"])
@pytest.mark.parametrize("equation,output_shape,input_dim,fan_in,fan_out", GEMMA_EQUATIONS)
def test_identity_then_scaling_then_merge(equation, output_shape, input_dim, fan_in, fan_out, side):
    layer = build_einsum(equation, output_shape, input_dim)
    x = random_inputs(input_dim)
    base = to_numpy(layer(x))
    wrapper = wrap(layer, side=side)
    np.testing.assert_array_equal(to_numpy(wrapper(x)), base)
    assert int(np.prod(wrapper.ia3_vector.shape)) == (fan_out if side == "output" else fan_in)
    rng = np.random.default_rng(0)
    vector = rng.uniform(0.5, 1.5, wrapper.ia3_vector.shape).astype("float32")
    wrapper.ia3_vector.assign(vector)
    axes = wrapper.axes
    letters = wrapper.vector_letters
    if side == "output":
        expected = np.einsum(f"{axes.output_letters},{letters}->{axes.output_letters}", base, vector)
    else:
        expected = to_numpy(layer(np.einsum(f"{axes.input_letters},{letters}->{axes.input_letters}", x, vector)))
    np.testing.assert_allclose(to_numpy(wrapper(x)), expected, atol=1e-5)
    assert wrapper.merge() is True
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)
    assert wrapper.merge() is False


def test_output_side_scales_the_bias_on_merge():
    layer = keras.layers.Dense(5)
    layer.build((None, 7))
    layer.bias.assign(np.arange(5, dtype="float32"))
    wrapper = wrap(layer, side="output")
    wrapper.ia3_vector.assign(np.full((5,), 2.0, "float32"))
    x = np.ones((2, 7), "float32")
    expected = to_numpy(wrapper(x))
    wrapper.merge()
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_float32_vector_under_bfloat16(policy):
    layer = keras.layers.EinsumDense("btd,df->btf", output_shape=(None, 32), dtype=policy)
    layer.build((2, 3, 16))
    wrapper = wrap(layer)
    assert keras.backend.standardize_dtype(wrapper.ia3_vector.dtype) == "float32"
    out = wrapper(random_inputs(16))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"


def test_bad_side_names_the_value():
    with pytest.raises(ValueError, match="side='middle'"):
        IA3Dense(build_einsum("btd,df->btf", (None, 32), 16), side="middle")


def test_config_round_trip():
    config = IA3Dense(build_einsum("btf,fd->btd", (None, 16), 32), side="input").get_config()
    assert config["side"] == "input"
    assert keras.saving.get_registered_object("kerasft>IA3Dense") is IA3Dense
    assert IA3Dense.from_config(config).side == "input"
