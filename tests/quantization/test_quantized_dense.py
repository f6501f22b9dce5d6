import keras
import numpy as np
import pytest
from keras import ops

from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from kerasft.quantization.quantizers import dequantize_matrix

# (equation, output_shape, input_shape): Gemma's attention and feed-forward layers
# with contracted sizes divisible by 64.
GEMMA_LAYERS = {
    "query": ("btd,ndh->btnh", (None, 4, 32), (2, 6, 128)),
    "key_value": ("bsd,kdh->bskh", (None, 1, 32), (2, 6, 128)),
    "attention_output": ("btnh,nhd->btd", (None, 128), (2, 6, 4, 32)),
    "ffw_gating": ("btd,df->btf", (None, 256), (2, 6, 128)),
    "ffw_linear": ("btf,fd->btd", (None, 128), (2, 6, 256)),
}
# Relative output error bounds for normal weights and inputs. RTN with a step
# of absmax/7 (~0.35 sigma at group 64) gives ~0.1 relative error for int4;
# measured: int8 <= 0.004, int4 <= 0.115, int4 asym <= 0.10, nf4 <= 0.095.
SCHEMES = {
    "int8": ({"mode": "int8"}, 0.01),
    "int4": ({"mode": "int4", "group_size": 64}, 0.13),
    "int4_asym": ({"mode": "int4", "group_size": 64, "asymmetric": True}, 0.13),
    "nf4": ({"mode": "nf4", "group_size": 64}, 0.13),
    "nf4_dq": ({"mode": "nf4", "group_size": 64, "double_quantize": True}, 0.13),
}


def float_layer(name, seed=0):
    equation, output_shape, input_shape = GEMMA_LAYERS[name]
    keras.utils.set_random_seed(seed)
    layer = keras.layers.EinsumDense(
        equation,
        output_shape=output_shape,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.05),
        name=name,
    )
    layer.build(input_shape)
    x = np.random.default_rng(seed).normal(size=input_shape).astype("float32")
    return layer, x


def relative_error(a, b):
    a, b = ops.convert_to_numpy(a), ops.convert_to_numpy(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("name", sorted(GEMMA_LAYERS))
def test_output_close_to_float_layer(name, scheme):
    kwargs, tolerance = SCHEMES[scheme]
    layer, x = float_layer(name)
    quantized = QuantizedEinsumDense.from_float(layer, **kwargs)
    assert quantized.equation == layer.equation
    assert quantized.kernel_shape == tuple(layer.kernel.shape)
    assert all(not v.trainable for v in quantized.variables)
    assert quantized.trainable_variables == []
    error = relative_error(quantized(x), layer(x))
    assert error < tolerance
    # Output error follows from the kernel error: same einsum on the dequantized kernel.
    expected = np.einsum(layer.equation, x, ops.convert_to_numpy(quantized.dequantized_kernel()))
    np.testing.assert_allclose(ops.convert_to_numpy(quantized(x)), expected, atol=2e-5)
    assert quantized.quantized_bytes() == quantized.expected_quantized_bytes()


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "int8", "group_size": 64}, {"mode": "int4", "group_size": 32, "asymmetric": True},
     {"mode": "nf4", "group_size": 64, "double_quantize": True}],
)
def test_dequantized_kernel_matches_numpy_reference(kwargs):
    layer, _ = float_layer("attention_output")
    quantized = QuantizedEinsumDense.from_float(layer, **kwargs)
    matrix = dequantize_matrix(quantized.quantized_matrix(), quantized.mode, quantized.group_size)
    kernel = ops.convert_to_numpy(quantized.dequantized_kernel())
    assert kernel.shape == (4, 32, 128)
    np.testing.assert_allclose(kernel.reshape(128, 128), matrix, atol=1e-7)


@pytest.mark.parametrize("scheme", ["int8", "int4_asym", "nf4_dq"])
def test_save_and_load_weights_is_bit_exact(tmp_path, scheme):
    kwargs = SCHEMES[scheme][0]
    layer, x = float_layer("query")
    quantized = QuantizedEinsumDense.from_float(layer, **kwargs)
    path = str(tmp_path / "q.weights.h5")
    model = keras.Sequential([keras.Input((6, 128)), quantized])
    model.save_weights(path)

    other_layer, _ = float_layer("query", seed=1)  # different float weights
    restored = QuantizedEinsumDense.from_float(other_layer, **kwargs)
    other = keras.Sequential([keras.Input((6, 128)), restored])
    assert not np.array_equal(
        ops.convert_to_numpy(restored(x)), ops.convert_to_numpy(quantized(x))
    )
    other.load_weights(path)
    for a, b in zip(quantized.variables, restored.variables):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(restored(x)), ops.convert_to_numpy(quantized(x))
    )


def test_config_round_trip_and_full_model_save(tmp_path):
    layer, x = float_layer("ffw_linear")
    quantized = QuantizedEinsumDense.from_float(layer, mode="int4", group_size=32, asymmetric=True)
    config = quantized.get_config()
    assert config["group_size"] == 32 and config["mode"] == "int4" and config["asymmetric"]
    clone = QuantizedEinsumDense.from_config(config)
    assert clone.get_config() == config

    inputs = keras.Input((6, 256))
    model = keras.Model(inputs, quantized(inputs))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[-1], QuantizedEinsumDense)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x))
    )


def test_dense_with_bias_and_activation():
    keras.utils.set_random_seed(3)
    dense = keras.layers.Dense(24, activation="relu", bias_initializer="random_normal")
    dense.build((None, 96))
    x = np.random.default_rng(3).normal(size=(5, 7, 96)).astype("float32")
    quantized = QuantizedEinsumDense.from_float(dense, mode="int8")
    assert quantized.equation == "...i,io->...o" and quantized.kernel_shape == (96, 24)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(quantized.bias), ops.convert_to_numpy(dense.bias)
    )
    assert relative_error(quantized(x), dense(x)) < 0.01
    assert quantized.compute_output_shape((5, 7, 96)) == (5, 7, 24)


def test_bfloat16_policy_runs_in_bfloat16():
    layer, x = float_layer("query")
    layer_bf16 = keras.layers.EinsumDense("btd,ndh->btnh", (None, 4, 32), dtype="bfloat16")
    layer_bf16.build((2, 6, 128))
    layer_bf16.kernel.assign(ops.cast(layer.kernel, "bfloat16"))
    quantized = QuantizedEinsumDense.from_float(layer_bf16, mode="nf4", group_size=64)
    outputs = quantized(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"
    assert relative_error(ops.cast(outputs, "float32"), layer(x)) < 0.11


def test_quantized_bytes_against_bfloat16():
    layer, _ = float_layer("ffw_gating")  # 128 x 256
    for kwargs, smallest_ratio in [
        ({"mode": "int8"}, 1.9),
        ({"mode": "int4", "group_size": 64}, 3.5),
        ({"mode": "int4", "group_size": 64, "asymmetric": True}, 3.5),
        ({"mode": "nf4", "group_size": 64}, 3.5),
        ({"mode": "nf4", "group_size": 64, "double_quantize": True}, 3.8),
    ]:
        quantized = QuantizedEinsumDense.from_float(layer, **kwargs)
        assert quantized.float_bytes("bfloat16") == 128 * 256 * 2
        assert quantized.float_bytes("bfloat16") / quantized.quantized_bytes() >= smallest_ratio
    # nf4 at group 64 with float32 scales: 0.5 + 4/64 bytes per weight.
    assert quantized.float_bytes("bfloat16") == 65536
    nf4 = QuantizedEinsumDense.from_float(layer, mode="nf4", group_size=64)
    assert nf4.quantized_bytes() == 128 * 256 // 2 + 2 * 256 * 4


def test_requantize_merges_an_update_and_is_stable():
    layer, x = float_layer("query")
    quantized = QuantizedEinsumDense.from_float(layer, mode="int4", group_size=64)
    kernel = ops.convert_to_numpy(quantized.dequantized_kernel())
    codes_before = ops.convert_to_numpy(quantized.kernel_codes).copy()
    # Requantizing the dequantized kernel reproduces it (fixed point of RTN).
    quantized.requantize(kernel)
    np.testing.assert_array_equal(ops.convert_to_numpy(quantized.kernel_codes), codes_before)
    np.testing.assert_allclose(ops.convert_to_numpy(quantized.dequantized_kernel()), kernel, atol=1e-7)
    # A merged update lands within the quantization step of the new kernel.
    delta = 0.01 * np.random.default_rng(5).normal(size=kernel.shape)
    quantized.requantize(ops.convert_to_tensor(kernel + delta))
    error = np.abs(ops.convert_to_numpy(quantized.dequantized_kernel()) - (kernel + delta))
    assert error.max() <= np.abs(kernel + delta).max() / 7 / 2 + 1e-6
    with pytest.raises(ValueError, match=r"kernel.shape=\(4, 32\)"):
        quantized.requantize(np.zeros((4, 32)))


def test_bad_arguments_raise():
    layer, _ = float_layer("query")
    with pytest.raises(ValueError, match="group_size=48 for contracted size 128"):
        QuantizedEinsumDense.from_float(layer, mode="int4", group_size=48)
    with pytest.raises(ValueError, match="mode='fp8'"):
        QuantizedEinsumDense.from_float(layer, mode="fp8")
    with pytest.raises(ValueError, match="kernel_shape=\\(4, 128\\)"):
        QuantizedEinsumDense("btd,ndh->btnh", (4, 128))
    with pytest.raises(ValueError, match="Received: layer='dropout'"):
        QuantizedEinsumDense.from_float(keras.layers.Dropout(0.1, name="dropout"))
