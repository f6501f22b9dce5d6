import numpy as np
import pytest

from kerasft.quantization.calibration import relative_output_error
from kerasft.quantization.gptq import gptq_quantize_matrix, inverse_hessian_cholesky
from kerasft.quantization.quantizers import dequantize_matrix, quantize_matrix


def test_inverse_hessian_cholesky_factor():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    h = x.T @ x / 200
    h[3, :] = h[:, 3] = 0.0  # a dead input feature
    upper = inverse_hessian_cholesky(h, damp=0.01)
    damped = h.copy()
    damped[3, 3] = 1.0
    damped[np.diag_indices(16)] += 0.01 * np.mean(np.diag(damped))
    np.testing.assert_allclose(upper.T @ upper, np.linalg.inv(damped), atol=1e-10)
    assert np.allclose(upper, np.triu(upper))


@pytest.mark.parametrize(
    "mode,kwargs,max_ratio",
    [
        ("int4", {}, 0.65),
        ("int4", {"asymmetric": True}, 0.65),
        ("nf4", {}, 0.65),
        ("nf4", {"double_quantize": True}, 0.65),
        ("int8", {}, 0.65),
    ],
)
def test_gptq_beats_round_to_nearest_on_realistic_activations(
    realistic_activations, mode, kwargs, max_ratio
):
    k, n, group = 128, 64, 64 if mode != "int8" else 128
    x = realistic_activations(2048, k)
    w = np.random.default_rng(1).normal(0, 0.05, (k, n))
    hessian = x.T @ x / len(x)
    rtn = quantize_matrix(w, mode, group, **kwargs)
    gptq = gptq_quantize_matrix(w, hessian, mode, group, **kwargs)
    rtn_error = relative_output_error(w, dequantize_matrix(rtn, mode, group), hessian)
    gptq_error = relative_output_error(w, dequantize_matrix(gptq, mode, group), hessian)
    # Measured ratios 0.49-0.51: GPTQ halves the output error on correlated inputs.
    assert gptq_error < max_ratio * rtn_error
    # Same scales as RTN (static groups), so the storage format is unchanged.
    np.testing.assert_array_equal(gptq.scale, rtn.scale)
    # The error measured directly on the activations agrees with the Hessian form.
    direct = np.linalg.norm(x @ (dequantize_matrix(gptq, mode, group) - w)) / np.linalg.norm(x @ w)
    np.testing.assert_allclose(gptq_error, direct, rtol=1e-6)


def test_gptq_with_identity_hessian_and_no_damping_is_round_to_nearest():
    w = np.random.default_rng(2).normal(size=(64, 8))
    rtn = quantize_matrix(w, "int4", 32)
    gptq = gptq_quantize_matrix(w, np.eye(64), "int4", 32, damp=0.0)
    np.testing.assert_array_equal(gptq.codes, rtn.codes)


def test_hessian_shape_is_checked():
    with pytest.raises(ValueError, match=r"hessian.shape=\(8, 8\)"):
        gptq_quantize_matrix(np.zeros((64, 4)), np.eye(8), "int4", 32)

