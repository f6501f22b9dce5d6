"""kerasft.layers.qlora: QLoRADense's frozen correction and its merge warning."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from kerasft.layers.qlora import QLoRADense, validate_residual_rank
from kerasft.quantization.quantized_dense import QuantizedEinsumDense


def quantized_query(seed=0):
    keras.utils.set_random_seed(seed)
    layer = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 2, 8), name="query")
    layer.build((2, 3, 16))
    return QuantizedEinsumDense.from_float(layer, mode="int8")


def test_the_residual_correction_adds_x_a_b_and_is_frozen():
    base = quantized_query()
    wrapper = QLoRADense(base, rank=2, alpha=2.0, residual_rank=3)
    wrapper.build()
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(3, 2, 8)).astype("float32")
    wrapper.residual_a.assign(a)
    wrapper.residual_b.assign(b)
    x = rng.normal(size=(2, 3, 16)).astype("float32")
    expected = ops.convert_to_numpy(base(x)) + np.einsum("btd,dr,rnh->btnh", x, a, b)
    np.testing.assert_allclose(ops.convert_to_numpy(wrapper(x)), expected, rtol=1e-5, atol=1e-5)
    assert not wrapper.residual_a.trainable and not wrapper.residual_b.trainable
    np.testing.assert_allclose(ops.convert_to_numpy(wrapper.residual_kernel()),
                               np.einsum("dr,rnh->ndh", a, b), rtol=1e-5, atol=1e-5)


def test_over_a_float_layer_there_is_no_correction_and_no_warning():
    layer = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 2, 8))
    layer.build((2, 3, 16))
    wrapper = QLoRADense(layer, rank=2, residual_rank=3)
    wrapper.build()
    assert wrapper.residual_rank == 0 and wrapper.residual_kernel() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapper.merge()


def test_merging_into_a_quantized_layer_warns_that_it_requantizes():
    wrapper = QLoRADense(quantized_query(), rank=2)
    wrapper.build()
    with pytest.warns(UserWarning, match="requantizes"):
        wrapper.merge()


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_residual_rank_must_be_a_non_negative_integer(value):
    with pytest.raises(ValueError, match=f"residual_rank={value!r}"):
        validate_residual_rank(value)
