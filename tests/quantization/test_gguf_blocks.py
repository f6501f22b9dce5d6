"""On-the-fly GGUF dequantization (`kerasft.quantization.gguf_blocks`) equals `gguf.quants`.

Blocks are random bytes with finite fp16 scales (every code, sign and
sub-block scale occurs), and for the types `gguf` can write, the blocks
`gguf.quants.quantize` makes of random weights.
"""

import gguf
import keras
import numpy as np
import pytest

from kerasft.quantization import gguf_blocks

# Byte offsets of the fp16 fields in each block (ggml-common.h).
_FP16_OFFSETS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}  # fmt: skip


def random_blocks(tensor_type, rows, row_size, seed=0):
    """Random GGUF bytes `(rows, row_bytes)` whose fp16 scales are finite."""
    rng = np.random.default_rng(seed)
    block_size, type_size = gguf_blocks.BLOCK_SIZES[tensor_type]
    blocks = rng.integers(0, 256, (rows * row_size // block_size, type_size), dtype=np.uint8)
    for offset in _FP16_OFFSETS[tensor_type]:
        scales = rng.normal(0.0, 0.05, (blocks.shape[0], 1)).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8)
    return blocks.reshape(rows, -1)


def _dequantize(data, tensor_type, row_size):
    values = gguf_blocks.dequantize_rows(keras.ops.convert_to_tensor(data), tensor_type, row_size)
    return keras.ops.convert_to_numpy(values)


@pytest.mark.parametrize("tensor_type", gguf_blocks.BLOCK_TYPES)
def test_random_blocks_dequantize_exactly_like_gguf(tensor_type):
    row_size = 512
    data = random_blocks(tensor_type, rows=6, row_size=row_size)
    expected = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[tensor_type])
    assert expected.shape == (6, row_size) and np.isfinite(expected).all()
    actual = _dequantize(data, tensor_type, row_size)
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(actual, expected.astype(np.float32))


@pytest.mark.parametrize("tensor_type", gguf_blocks.QUANTIZABLE_BLOCK_TYPES)
def test_quantized_weights_dequantize_exactly_like_gguf(tensor_type):
    rng = np.random.default_rng(1)
    weights = rng.normal(0.0, 0.02, (5, 3, 64)).astype(np.float32)  # leading axes kept
    data = gguf.quants.quantize(weights, gguf.GGMLQuantizationType[tensor_type])
    expected = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[tensor_type])
    actual = _dequantize(data, tensor_type, 64)
    assert actual.shape == (5, 3, 64)
    np.testing.assert_array_equal(actual, expected)
    # The round trip is close to the weights (a 4-bit type within a few percent).
    assert np.abs(actual - weights).max() < 0.15 * np.abs(weights).max()


@pytest.mark.parametrize("tensor_type", gguf_blocks.FLOAT_TYPES)
def test_float_types_are_only_cast(tensor_type):
    values = np.array([[1.5, -2.25, 3e-3, 7.0]], dtype=np.float32)
    stored = keras.ops.cast(values, gguf_blocks.storage_dtype(tensor_type))
    np.testing.assert_array_equal(
        _dequantize(stored, tensor_type, 4), keras.ops.convert_to_numpy(keras.ops.cast(stored, "float32"))
    )


def test_jitted_dequantization_is_exact():
    data = random_blocks("Q4_K", rows=4, row_size=256, seed=3)
    expected = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_K)
    if keras.backend.backend() == "jax":
        import jax

        actual = jax.jit(lambda d: gguf_blocks.dequantize_rows(d, "Q4_K", 256))(data)
    else:
        actual = _dequantize(data, "Q4_K", 256)
    np.testing.assert_array_equal(np.asarray(actual), expected)


def test_sizes_and_errors():
    assert gguf_blocks.row_bytes("Q4_K", 512) == 2 * 144
    assert gguf_blocks.tensor_bytes("Q8_0", (10, 64)) == 10 * 2 * 34
    assert gguf_blocks.tensor_bytes("F16", (10, 64)) == 10 * 64 * 2
    with pytest.raises(ValueError, match=r"Received: tensor_type='IQ2_XS'"):
        gguf_blocks.check_tensor_type("IQ2_XS")
    with pytest.raises(ValueError, match=r"multiple of 256 values. Received: row_size=100"):
        gguf_blocks.row_bytes("Q6_K", 100)
    with pytest.raises(ValueError, match=r"take 18 bytes. Received: data of shape \(2, 17\)"):
        gguf_blocks.dequantize_rows(np.zeros((2, 17), np.uint8), "Q4_0", 32)
