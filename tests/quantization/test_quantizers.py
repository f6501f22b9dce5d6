import numpy as np
import pytest

from kerasft.quantization.codebooks import nf4_max_half_gap
from kerasft.quantization.quantizers import (
    dequantize_matrix,
    dequantize_scales,
    double_quantize_scales,
    expand_groups,
    quantize_matrix,
    quantized_kernel_bytes,
    resolve_group_size,
)


def weights(shape=(256, 48), seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.05, shape)
    w[rng.random(shape) < 0.01] *= 20.0  # a few outliers
    w[:, 0] += 0.03  # one column with a non-zero mean (asymmetric)
    return w


@pytest.mark.parametrize("group_size", [None, 32, 64])
def test_int8_symmetric_error_is_at_most_half_a_step(group_size):
    w = weights()
    g = resolve_group_size("int8", group_size, w.shape[0])
    q = quantize_matrix(w, "int8", g)
    assert q.codes.min() >= -127 and q.codes.max() <= 127
    bound = expand_groups(q.scale, g) / 2
    assert np.all(np.abs(w - dequantize_matrix(q, "int8", g)) <= bound * (1 + 1e-9))
    # absmax maps onto the largest code exactly.
    np.testing.assert_allclose(q.scale[0], np.abs(w.reshape(-1, g, 48)).max(1)[0] / 127)


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_integer_schemes_error_is_at_most_half_a_step(mode, asymmetric, group_size):
    w = weights()
    q = quantize_matrix(w, mode, group_size, asymmetric=asymmetric)
    error = np.abs(w - dequantize_matrix(q, mode, group_size))
    assert np.all(error <= expand_groups(q.scale, group_size) / 2 * (1 + 1e-9))
    if asymmetric:
        top = 255 if mode == "int8" else 15
        assert q.codes.min() >= 0 and q.codes.max() <= top
        assert q.zero.min() >= 0 and q.zero.max() <= top


def test_asymmetric_int4_is_finer_on_a_shifted_group():
    w = np.random.default_rng(1).uniform(0.0, 1.0, (64, 8))  # all positive
    sym = quantize_matrix(w, "int4", 64)
    asym = quantize_matrix(w, "int4", 64, asymmetric=True)
    sym_error = np.abs(w - dequantize_matrix(sym, "int4", 64)).mean()
    asym_error = np.abs(w - dequantize_matrix(asym, "int4", 64)).mean()
    # Steps of max/15 instead of max/7: about half the error.
    assert asym_error < 0.6 * sym_error


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_nf4_error_is_within_absmax_times_half_the_largest_gap(group_size):
    w = weights()
    q = quantize_matrix(w, "nf4", group_size)
    assert q.codes.min() >= 0 and q.codes.max() <= 15
    absmax = expand_groups(np.abs(w.reshape(-1, group_size, 48)).max(1), group_size)
    error = np.abs(w - dequantize_matrix(q, "nf4", group_size))
    assert np.all(error <= absmax * nf4_max_half_gap() * (1 + 1e-6))
    # The bound is nearly attained somewhere, so it is the right bound.
    assert np.max(error / (absmax * nf4_max_half_gap())) > 0.8


def test_nf4_double_quantized_error_bound():
    w = weights((512, 96))
    q = quantize_matrix(w, "nf4", 64, double_quantize=True)
    absmax = np.abs(w.reshape(-1, 64, 96)).max(1)
    assert q.scale_codes.dtype == np.int8 and q.scale_codes.shape == (768,)  # 8*96 -> 3 blocks
    assert q.scale_block_scale.shape == (3,) and q.scale_offset.shape == (1,)
    scale_error = np.abs(q.scale - absmax)
    # Second-level rounding: up, by less than one step of each block's int8 grid.
    step = np.repeat(q.scale_block_scale, 256)[: absmax.size].reshape(absmax.shape)
    assert np.all(scale_error <= step * (1 + 1e-5) + 1e-7)
    assert np.all(q.scale >= absmax * (1 - 1e-6))  # never below: no weight is clipped
    bound = expand_groups(np.abs(q.scale) * nf4_max_half_gap() + scale_error, 64)
    assert np.all(np.abs(w - dequantize_matrix(q, "nf4", 64)) <= bound * (1 + 1e-6))


def test_double_quantization_round_trip_of_scales():
    scales = np.random.default_rng(2).uniform(0.01, 0.2, (7, 100))  # 700 -> 3 blocks
    codes, block_scale, offset = double_quantize_scales(scales)
    restored = dequantize_scales(codes, block_scale, offset, scales.shape)
    assert codes.shape == (768,) and block_scale.dtype == np.float32
    np.testing.assert_allclose(offset[0], scales.mean(), rtol=1e-6)
    assert np.all(restored >= scales * (1 - 1e-6))  # rounded up
    assert np.max(restored - scales) <= block_scale.max() * (1 + 1e-5)
    assert np.max(np.abs(restored - scales)) < 0.2 / 127 * 2


def test_group_size_must_divide_the_contracted_size():
    with pytest.raises(ValueError, match="group_size=48 for contracted size 128"):
        resolve_group_size("int4", 48, 128)
    with pytest.raises(ValueError, match="group_size=0"):
        resolve_group_size("int4", 0, 128)
    assert resolve_group_size("int8", "auto", 128) == 128
    assert resolve_group_size("nf4", "auto", 128) == 64
    assert resolve_group_size("int4", None, 96) == 96


def test_bad_scheme_arguments_raise():
    with pytest.raises(ValueError, match="mode='int3'"):
        quantize_matrix(weights(), "int3", 64)
    with pytest.raises(ValueError, match="asymmetric=True"):
        quantize_matrix(weights(), "nf4", 64, asymmetric=True)
    with pytest.raises(ValueError, match="scale_dtype='int8'"):
        quantize_matrix(weights(), "int4", 64, scale_dtype="int8")


def test_kernel_bytes_formula():
    k, n = 1152, 1024
    assert quantized_kernel_bytes(k, n, "int8") == k * n + n * 4
    assert quantized_kernel_bytes(k, n, "int4", 64) == k * n // 2 + 18 * n * 4
    assert quantized_kernel_bytes(k, n, "int4", 64, asymmetric=True) == (
        k * n // 2 + 18 * n * 4 + 9 * n
    )
    # 18 * 1024 scales -> 72 blocks of 256 int8 codes + 72 float32 block scales + offset.
    assert quantized_kernel_bytes(k, n, "nf4", 64, double_quantize=True) == (
        k * n // 2 + 72 * 256 + 72 * 4 + 4
    )
    bf16 = 2 * k * n
    for mode, kwargs in [("int4", {}), ("int4", {"asymmetric": True}), ("nf4", {}),
                         ("nf4", {"double_quantize": True})]:
        assert bf16 / quantized_kernel_bytes(k, n, mode, 64, **kwargs) >= 3.5
    np.testing.assert_allclose(bf16 / quantized_kernel_bytes(k, n, "nf4", 64), 3.5556, atol=1e-4)
