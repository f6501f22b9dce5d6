"""Per-group clipping search: shrink each group's range where it lowers output error.

Absmax scales spend resolution on the largest weight of a group; clipping that
weight and rounding the rest more finely often lowers the error of the
layer's *output*. For every group and output column this search tries range
ratios (1.0, 0.95, ..., 0.5 by default) and keeps the one minimising
`d^T H_g d`, the output error contributed by the group's rounding error `d`
under the group's block `H_g` of the input Hessian (as in AWQ's auto-clip).
"""

from typing import Sequence

import numpy as np

from kerasft.quantization.quantizers import dequantize_matrix, quantize_matrix

DEFAULT_CLIP_RATIOS = tuple(np.round(np.linspace(1.0, 0.5, 11), 4))


def search_clip_ratios(
    w: np.ndarray,
    hessian: np.ndarray,
    mode: str,
    group_size: int,
    asymmetric: bool = False,
    scale_dtype: str = "float32",
    ratios: Sequence[float] = DEFAULT_CLIP_RATIOS,
) -> np.ndarray:
    """Chooses a clip ratio per `(group, column)` of a `(K, N)` matrix.

    Args:
        w: float `(K, N)` kernel matrix.
        hessian: `(K, K)` second moments of the layer's input rows.
        mode, group_size, asymmetric, scale_dtype: the scheme.
        ratios: candidate ratios in (0, 1]; 1 is plain absmax.

    Returns:
        A float64 `(K // group_size, N)` array of ratios, for the
        `clip_ratio` argument of `quantize_matrix` or `gptq_quantize_matrix`.

    Raises:
        ValueError: if a ratio is outside (0, 1].
    """
    ratios = [float(r) for r in ratios]
    if not ratios or min(ratios) <= 0 or max(ratios) > 1:
        raise ValueError(f"`ratios` must lie in (0, 1]. Received: ratios={ratios}")
    w = np.asarray(w, dtype="float64")
    k, n = w.shape
    num_groups = k // group_size
    blocks = np.stack(
        [
            hessian[g * group_size : (g + 1) * group_size, g * group_size : (g + 1) * group_size]
            for g in range(num_groups)
        ]
    )
    best_error = np.full((num_groups, n), np.inf)
    best_ratio = np.ones((num_groups, n))
    for ratio in ratios:
        quantized = quantize_matrix(
            w, mode, group_size, asymmetric=asymmetric, scale_dtype=scale_dtype, clip_ratio=ratio
        )
        delta = (dequantize_matrix(quantized, mode, group_size) - w).reshape(
            num_groups, group_size, n
        )
        error = np.sum(delta * np.matmul(blocks, delta), axis=1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_ratio = np.where(better, ratio, best_ratio)
    return best_ratio
