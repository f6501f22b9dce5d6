"""Low-rank factors of a quantization error, to start QLoRA adapters from.

Quantizing a kernel `W` to `Q` leaves an error `E = W - Q`. Starting the LoRA
factors at the best rank-`r` approximation of `E` (instead of `B = 0`) makes
`Q + A @ B` close to `W` before any training (LoftQ, Li et al., 2023, one
alternation). With calibration activations `X` the approximation minimises
the layer's output error `||X (E - A @ B)||_F` instead of `||E - A @ B||_F`
(the closed form of CLoQ, Deng et al., 2025): the SVD is taken of
`H^(1/2) E`, where `H = X^T X / rows`, and mapped back with `H^(-1/2)`.

On the real Gemma 3 270M with NF4 (group 64, double quantization) a rank-8
calibrated start cuts the layers' output error to about half and the held-out
perplexity gap before training from +24% to +4% (see the README).
"""

import numpy as np


def low_rank_residual(
    error: np.ndarray, rank: int, hessian: np.ndarray | None = None, damp: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """The rank-`rank` factors `(a, b)` with `a @ b` closest to `error`.

    Args:
        error: `(K, N)` matrix `W - Q` (contracted inputs x outputs).
        rank: number of singular directions kept, a positive integer.
        hessian: optional `(K, K)` input second moments `X^T X / rows`; with
            it, the output error `||X (error - a @ b)||_F` is minimised.
        damp: with `hessian`, the fraction of its mean diagonal added to the
            diagonal, so that inputs never seen in calibration still count.

    Returns:
        `(a, b)`: float64 arrays `(K, rank)` and `(rank, N)`, the singular
        values split evenly between them (`sqrt(s)` on each side).

    Raises:
        ValueError: if `rank` is not a positive integer no larger than
            `min(K, N)`, or `hessian` is not `(K, K)`.
    """
    error = np.asarray(error, dtype="float64")
    if error.ndim != 2:
        raise ValueError(f"`error` must be a 2D matrix. Received: error.shape={error.shape}")
    k, n = error.shape
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not (
        0 < rank <= min(k, n)
    ):
        raise ValueError(
            f"`rank` must be an integer in [1, {min(k, n)}] for a {k}x{n} matrix. "
            f"Received: rank={rank!r}"
        )
    if hessian is None:
        root = inverse_root = None
        weighted = error
    else:
        hessian = np.asarray(hessian, dtype="float64")
        if hessian.shape != (k, k):
            raise ValueError(
                f"`hessian` must have shape {(k, k)} for a {k}x{n} error. "
                f"Received: hessian.shape={hessian.shape}"
            )
        root, inverse_root = _damped_roots(hessian, damp)
        weighted = root @ error
    u, s, vt = np.linalg.svd(weighted, full_matrices=False)
    half = np.sqrt(s[:rank])
    a = u[:, :rank] * half
    b = half[:, None] * vt[:rank]
    if inverse_root is not None:
        a = inverse_root @ a
    return a, b


def _damped_roots(hessian, damp):
    """`(H + damp * mean(diag H) * I)^(1/2)` and its inverse (symmetric roots)."""
    h = (hessian + hessian.T) / 2.0
    h = h + damp * max(float(np.mean(np.diag(h))), 1e-12) * np.eye(len(h))
    values, vectors = np.linalg.eigh(h)
    values = np.maximum(values, 1e-12 * values.max())
    root = (vectors * np.sqrt(values)) @ vectors.T
    inverse_root = (vectors / np.sqrt(values)) @ vectors.T
    return root, inverse_root


def weighted_error(error: np.ndarray, hessian: np.ndarray | None = None) -> float:
    """`||X error||_F^2 / rows` (`||error||_F^2` without a Hessian)."""
    error = np.asarray(error, dtype="float64")
    if hessian is None:
        return float(np.sum(error * error))
    return float(np.sum(error * (np.asarray(hessian, dtype="float64") @ error)))
