import numpy as np
import pytest

from kerasft.quantization.quantizers import dequantize_matrix, quantize_matrix
from kerasft.quantization.residual_init import low_rank_residual, weighted_error


def nf4_error(rows=64, columns=48, seed=0):
    weights = np.random.default_rng(seed).normal(size=(rows, columns))
    quantized = dequantize_matrix(quantize_matrix(weights, "nf4", 16), "nf4", 16)
    return weights - quantized


def test_unweighted_factors_are_the_truncated_svd():
    error = nf4_error()
    a, b = low_rank_residual(error, 4)
    assert a.shape == (64, 4) and b.shape == (4, 48)
    s = np.linalg.svd(error, compute_uv=False)
    # Eckart-Young: the residual's norm is the norm of the dropped singular values.
    np.testing.assert_allclose(weighted_error(error - a @ b), np.sum(s[4:] ** 2), rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1), rtol=1e-10)


def test_full_rank_reconstructs_the_error_exactly():
    error = nf4_error(rows=32, columns=16)
    a, b = low_rank_residual(error, 16)
    np.testing.assert_allclose(a @ b, error, atol=1e-12)


def test_weighted_factors_beat_the_plain_svd_on_the_activations(realistic_activations):
    error = nf4_error()
    x = realistic_activations(512, 64)
    hessian = x.T @ x / len(x)
    a, b = low_rank_residual(error, 4, hessian, damp=0.0)
    plain_a, plain_b = low_rank_residual(error, 4)
    weighted = weighted_error(error - a @ b, hessian)
    plain = weighted_error(error - plain_a @ plain_b, hessian)
    assert weighted < 0.8 * plain
    # And it is optimal: equal to the dropped singular values of H^(1/2) E.
    values, vectors = np.linalg.eigh(hessian)
    root = (vectors * np.sqrt(np.maximum(values, 0))) @ vectors.T
    s = np.linalg.svd(root @ error, compute_uv=False)
    np.testing.assert_allclose(weighted, np.sum(s[4:] ** 2), rtol=1e-6)


@pytest.mark.parametrize("rank", [0, 49, 2.0, True])
def test_bad_rank_is_named(rank):
    with pytest.raises(ValueError, match="rank"):
        low_rank_residual(nf4_error(), rank)


def test_bad_hessian_shape_is_named():
    with pytest.raises(ValueError, match=r"hessian.shape=\(48, 48\)"):
        low_rank_residual(nf4_error(), 2, np.eye(48))
