"""GPTQ: error-compensating rounding of a kernel matrix (Frantar et al., 2023).

Rows of the `(K, N)` kernel matrix (one per contracted input feature) are
rounded one at a time; the rounding error of each row, weighted by the inverse
input Hessian, is pushed onto the rows not yet rounded, so that the layer's
output `X W` (rather than `W` itself) stays close. The group scales are fixed
up front from the float weights ("static groups"), which lets GPTQ share the
storage format, zero points and double-quantized scales of round-to-nearest.
"""

import numpy as np

from kerasft.quantization.quantizers import (
    QuantizedMatrix,
    compute_scales,
    dequantize_values,
    expand_groups,
    quantize_values,
    stored_scales,
    validate_scheme,
)


def inverse_hessian_cholesky(hessian: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse Hessian.

    Args:
        hessian: `(K, K)` input second moments.
        damp: fraction of the mean diagonal added to the diagonal.

    Returns:
        Upper-triangular `U` with `U^T U = (H + damp * mean(diag H) * I)^-1`.
    """
    h = np.array(hessian, dtype="float64")
    dead = np.diag(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    inverse = np.linalg.inv(h)
    inverse = (inverse + inverse.T) / 2.0
    return np.linalg.cholesky(inverse).T


def gptq_quantize_matrix(
    w: np.ndarray,
    hessian: np.ndarray,
    mode: str,
    group_size: int,
    asymmetric: bool = False,
    double_quantize: bool = False,
    scale_dtype: str = "float32",
    clip_ratio: float | np.ndarray = 1.0,
    damp: float = 0.01,
    block_size: int = 128,
) -> QuantizedMatrix:
    """Quantizes a `(K, N)` matrix with GPTQ under static group scales.

    Args:
        w: float `(K, N)` kernel matrix.
        hessian: `(K, K)` second moments of the layer's input rows.
        mode, group_size, asymmetric, double_quantize, scale_dtype: the
            scheme (see `quantizers.quantize_matrix`).
        clip_ratio: scalar or `(G, N)` range shrink for the scales (e.g. from
            `clipping.search_clip_ratios`).
        damp: diagonal damping, as a fraction of the mean diagonal.
        block_size: rows per lazy-update block (speed only).

    Returns:
        A `QuantizedMatrix`.
    """
    validate_scheme(mode, asymmetric, scale_dtype)
    w = np.array(w, dtype="float64")
    k, n = w.shape
    if np.shape(hessian) != (k, k):
        raise ValueError(
            f"`hessian` must have shape {(k, k)} for a kernel matrix of shape {(k, n)}. "
            f"Received: hessian.shape={np.shape(hessian)}"
        )
    scale, zero = compute_scales(w, mode, group_size, asymmetric, clip_ratio)
    scale, parts = stored_scales(scale, double_quantize, scale_dtype)
    row_scale = expand_groups(scale, group_size)
    row_zero = expand_groups(zero, group_size)
    upper = inverse_hessian_cholesky(hessian, damp)
    codes = np.zeros((k, n), dtype="int64")
    for start in range(0, k, block_size):
        stop = min(start + block_size, k)
        block = w[start:stop].copy()
        errors = np.zeros_like(block)
        for j in range(stop - start):
            row = start + j
            z = None if row_zero is None else row_zero[row]
            q = quantize_values(block[j], row_scale[row], z, mode, asymmetric)
            codes[row] = q
            error = (block[j] - dequantize_values(q, row_scale[row], z, mode)) / upper[row, row]
            block[j + 1 :] -= np.outer(upper[row, row + 1 : stop], error)
            errors[j] = error
        w[stop:] -= upper[start:stop, stop:].T @ errors
    result = QuantizedMatrix(codes=codes, scale=scale, zero=zero)
    if parts is not None:
        result.scale_codes, result.scale_block_scale, result.scale_offset = parts
    return result
