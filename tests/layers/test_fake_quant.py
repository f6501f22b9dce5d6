import keras
import numpy as np
import pytest

from kerasft.layers.fake_quant import FakeQuantDense, fake_quantize_matrix
from kerasft.quantization import QuantizedEinsumDense
from kerasft.quantization.quantizers import dequantize_matrix, quantize_matrix
from tests.conftest import to_numpy

SCHEMES = [("int8", False), ("int4", False), ("int4", True), ("nf4", False), ("int8", True)]


@pytest.mark.parametrize("mode,asymmetric", SCHEMES)
def test_fake_quantize_matrix_equals_the_offline_quantizer(mode, asymmetric):
    w = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    fake = to_numpy(fake_quantize_matrix(w, mode, 8, asymmetric))
    offline = quantize_matrix(w, mode, 8, asymmetric=asymmetric)
    np.testing.assert_allclose(fake, dequantize_matrix(offline, mode, 8), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode,asymmetric", SCHEMES)
def test_wrapper_output_equals_the_quantized_layer(mode, asymmetric):
    layer = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 2, 8))
    layer.build((None, None, 16))
    x = np.random.default_rng(1).normal(size=(2, 3, 16)).astype("float32")
    fake = FakeQuantDense(layer, mode=mode, group_size=8, asymmetric=asymmetric)
    quantized = QuantizedEinsumDense.from_float(
        layer, mode=mode, group_size=8, asymmetric=asymmetric
    )
    np.testing.assert_allclose(to_numpy(fake(x)), to_numpy(quantized(x)), rtol=1e-5, atol=1e-6)
    assert [v.path for v in fake.trainable_weights] == [layer._kernel.path]


def test_straight_through_gradient_is_the_float_gradient():
    layer = keras.layers.Dense(4, use_bias=False)
    layer.build((None, 8))
    fake = FakeQuantDense(layer, mode="int4", group_size=8)
    x = np.random.default_rng(2).normal(size=(5, 8)).astype("float32")
    if keras.backend.backend() == "jax":
        import jax

        def total(kernel):
            return fake.stateless_call([kernel], [], x)[0].sum()

        grads = jax.grad(total)(to_numpy(layer._kernel))
    else:
        import torch

        out = fake(torch.as_tensor(x))
        out.sum().backward()
        grads = layer._kernel.value.grad
    np.testing.assert_allclose(to_numpy(grads), np.tile(x.sum(0)[:, None], (1, 4)), rtol=1e-5)


def test_bad_layer_and_group_size_name_the_argument():
    layer = keras.layers.Dense(4)
    layer.build((None, 12))
    with pytest.raises(ValueError, match="group_size=8"):
        FakeQuantDense(layer, mode="int4", group_size=8)
    with pytest.raises(ValueError, match="mode='int3'"):
        FakeQuantDense(layer, mode="int3")
