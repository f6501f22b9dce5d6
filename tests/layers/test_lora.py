import math

import keras
import numpy as np
import pytest

from kerasft.layers.lora import LoRADense
from tests.conftest import to_numpy
from tests.test_einsum import GEMMA_EQUATIONS, build_einsum


def random_inputs(layer_input_dim, seed=0):
    rng = np.random.default_rng(seed)
    shape = (2, 3, 2, 8) if layer_input_dim is None else (2, 3, layer_input_dim)
    return rng.normal(size=shape).astype("float32")


def wrap(layer, **kwargs):
    wrapper = LoRADense(layer, **kwargs)
    wrapper.build()
    return wrapper


def randomize_b(wrapper, seed=1):
    rng = np.random.default_rng(seed)
    wrapper.lora_b.assign(rng.normal(size=wrapper.lora_b.shape).astype("float32"))


@pytest.mark.parametrize("equation,output_shape,input_dim,fan_in,fan_out", GEMMA_EQUATIONS)
def test_starts_as_identity_and_counts_rank_times_fans(equation, output_shape, input_dim, fan_in, fan_out):
    layer = build_einsum(equation, output_shape, input_dim)
    x = random_inputs(input_dim)
    expected = to_numpy(layer(x))
    wrapper = wrap(layer, rank=3)
    np.testing.assert_array_equal(to_numpy(wrapper(x)), expected)
    assert sum(int(np.prod(v.shape)) for v in wrapper.trainable_weights) == 3 * (fan_in + fan_out)


@pytest.mark.parametrize("equation,output_shape,input_dim,fan_in,fan_out", GEMMA_EQUATIONS)
@pytest.mark.parametrize("use_rslora", [False, True])
def test_output_equals_kernel_plus_scaled_product(equation, output_shape, input_dim, fan_in, fan_out, use_rslora):
    layer = build_einsum(equation, output_shape, input_dim)
    wrapper = wrap(layer, rank=4, alpha=6.0, use_rslora=use_rslora)
    randomize_b(wrapper)
    scale = 6.0 / math.sqrt(4) if use_rslora else 6.0 / 4
    assert wrapper.scale == pytest.approx(scale)
    # Reference: a plain EinsumDense whose kernel is W + scale * (A @ B)
    # reshaped from the (fan_in, fan_out) matrix product.
    axes = wrapper.axes
    a = to_numpy(wrapper.lora_a).reshape(fan_in, 4)
    b = to_numpy(wrapper.lora_b).reshape(4, fan_out)
    delta = (a @ b).reshape(axes.shape_of(axes.fan_in_letters) + axes.shape_of(axes.fan_out_letters))
    order = axes.fan_in_letters + axes.fan_out_letters
    delta = np.transpose(delta, [order.index(c) for c in axes.kernel_letters])
    reference = build_einsum(equation, output_shape, input_dim)
    reference._kernel.assign(to_numpy(layer._kernel) + scale * delta)
    x = random_inputs(input_dim)
    np.testing.assert_allclose(to_numpy(wrapper(x)), to_numpy(reference(x)), atol=1e-5)


def test_merge_unmerge_round_trip_and_merging_twice_is_a_no_op():
    layer = build_einsum("btd,ndh->btnh", (None, 2, 8), 16)
    original_kernel = to_numpy(layer._kernel).copy()
    wrapper = wrap(layer, rank=4)
    randomize_b(wrapper)
    x = random_inputs(16)
    before = to_numpy(wrapper(x))
    assert wrapper.merge() is True
    merged_kernel = to_numpy(layer._kernel).copy()
    np.testing.assert_allclose(to_numpy(wrapper(x)), before, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer(x)), before, atol=1e-5)
    assert wrapper.merge() is False
    np.testing.assert_array_equal(to_numpy(layer._kernel), merged_kernel)
    assert wrapper.unmerge() is True
    np.testing.assert_allclose(to_numpy(layer._kernel), original_kernel, atol=1e-6)
    np.testing.assert_allclose(to_numpy(wrapper(x)), before, atol=1e-5)


def test_dropout_only_in_training_and_only_on_the_adapter_path():
    layer = build_einsum("btd,df->btf", (None, 32), 16)
    wrapper = wrap(layer, rank=4, dropout=0.5)
    x = random_inputs(16)
    base = to_numpy(layer(x))
    # With B = 0 the adapter adds nothing, dropout or not.
    np.testing.assert_array_equal(to_numpy(wrapper(x, training=True)), base)
    randomize_b(wrapper)
    inference = to_numpy(wrapper(x, training=False))
    training = to_numpy(wrapper(x, training=True))
    assert not np.allclose(training, inference)
    np.testing.assert_array_equal(to_numpy(wrapper(x, training=False)), inference)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16"])
def test_adapter_weights_are_float32_and_compute_follows_the_layer(policy):
    layer = keras.layers.EinsumDense("btd,df->btf", output_shape=(None, 32), dtype=policy)
    layer.build((2, 3, 16))
    wrapper = wrap(layer, rank=4)
    randomize_b(wrapper)
    assert keras.backend.standardize_dtype(wrapper.lora_a.dtype) == "float32"
    assert keras.backend.standardize_dtype(wrapper.lora_b.dtype) == "float32"
    x = random_inputs(16)
    out = wrapper(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    reference = to_numpy(layer._kernel).astype("float32") + to_numpy(wrapper.delta_kernel())
    expected = np.einsum("btd,df->btf", x, reference)
    np.testing.assert_allclose(to_numpy(keras.ops.cast(out, "float32")), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rank": 0}, "rank=0"),
        ({"rank": -2}, "rank=-2"),
        ({"rank": 2.5}, "rank=2.5"),
        ({"alpha": 0}, "alpha=0"),
        ({"alpha": -1.0}, "alpha=-1.0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(kwargs, message):
    layer = build_einsum("btd,df->btf", (None, 32), 16)
    with pytest.raises(ValueError, match=message):
        LoRADense(layer, **kwargs)


def test_config_round_trip():
    layer = build_einsum("btd,df->btf", (None, 32), 16)
    wrapper = LoRADense(layer, rank=5, alpha=7.0, dropout=0.25, use_rslora=True, target_path="a/b")
    config = wrapper.get_config()
    assert {k: config[k] for k in ("rank", "alpha", "dropout", "use_rslora", "target_path")} == {
        "rank": 5,
        "alpha": 7.0,
        "dropout": 0.25,
        "use_rslora": True,
        "target_path": "a/b",
    }
    assert config["layer"]["config"]["equation"] == "btd,df->btf"
    assert keras.saving.get_registered_object("kerasft>LoRADense") is LoRADense
