"""kerasft.quantization.float_layers: a quantized layer's float twin, and float layer specs."""

import keras
import numpy as np
import pytest
from keras import ops

from kerasft.quantization.float_layers import float_layer_spec
from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from tests.quantization.test_quantized_dense import GEMMA_LAYERS, float_layer


@pytest.mark.parametrize("name", sorted(GEMMA_LAYERS))
def test_to_float_computes_what_the_quantized_layer_computes(name):
    layer, x = float_layer(name)
    quantized = QuantizedEinsumDense.from_float(layer, mode="nf4", group_size=64)
    twin = quantized.to_float()
    assert isinstance(twin, keras.layers.EinsumDense) and twin.name == layer.name
    np.testing.assert_allclose(ops.convert_to_numpy(twin(x)), ops.convert_to_numpy(quantized(x)),
                               rtol=1e-5, atol=1e-6)


def test_to_float_holds_a_given_kernel_and_keeps_dense_bias_and_activation():
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(6, activation="relu", name="head")
    dense.build((None, 64))
    quantized = QuantizedEinsumDense.from_float(dense, mode="int8")
    kernel = np.random.default_rng(1).normal(size=(64, 6)).astype("float32")
    twin = quantized.to_float(kernel)
    assert isinstance(twin, keras.layers.Dense) and twin.activation is dense.activation
    np.testing.assert_array_equal(ops.convert_to_numpy(twin.kernel), kernel)
    np.testing.assert_array_equal(ops.convert_to_numpy(twin.bias), ops.convert_to_numpy(dense.bias))


def test_float_layer_spec_reads_a_layer_and_refuses_others():
    layer, _ = float_layer("ffw_gating")
    spec = float_layer_spec(layer)
    assert spec["equation"] == "btd,df->btf" and spec["bias"] is None
    np.testing.assert_array_equal(spec["kernel"], ops.convert_to_numpy(layer.kernel))
    with pytest.raises(ValueError, match="Embedding"):
        float_layer_spec(keras.layers.Embedding(4, 2))
    with pytest.raises(ValueError, match="built"):
        float_layer_spec(keras.layers.Dense(3))
