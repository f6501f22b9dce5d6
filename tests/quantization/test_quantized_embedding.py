import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from kerasft.quantization.quantized_embedding import QuantizedEmbedding


def float_embedding(**kwargs):
    keras.utils.set_random_seed(0)
    layer = keras_hub.layers.ReversibleEmbedding(
        97, 32, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5), **kwargs
    )
    layer.build()
    return layer


def test_lookup_and_tied_logits_are_close_to_the_float_layer():
    layer = float_embedding(logit_soft_cap=30.0)
    quantized = QuantizedEmbedding.from_float(layer)
    ids = np.array([[1, 5, 96], [0, 2, 2]])
    table = ops.convert_to_numpy(layer.embeddings)
    scale = np.abs(table).max(1) / 127
    error = np.abs(ops.convert_to_numpy(quantized(ids)) - table[ids])
    assert np.all(error <= scale[ids][..., None] / 2 * (1 + 1e-6))
    x = np.random.default_rng(0).normal(size=(2, 3, 32)).astype("float32")
    logits, reference = quantized(x, reverse=True), layer(x, reverse=True)
    assert logits.shape == (2, 3, 97)
    relative = np.linalg.norm(ops.convert_to_numpy(logits) - ops.convert_to_numpy(reference))
    assert relative / np.linalg.norm(ops.convert_to_numpy(reference)) < 0.01
    assert quantized.quantized_bytes() == 97 * 32 + 97 * 4


def test_config_and_weights_round_trip(tmp_path):
    quantized = QuantizedEmbedding.from_float(float_embedding())
    clone = QuantizedEmbedding.from_config(quantized.get_config())
    clone.build()
    for a, b in zip(clone.variables, quantized.variables):
        a.assign(b)
    ids = np.array([[3, 4]])
    np.testing.assert_array_equal(ops.convert_to_numpy(clone(ids)), ops.convert_to_numpy(quantized(ids)))


def test_untied_embedding_raises():
    with pytest.raises(ValueError, match="tie_weights=False"):
        QuantizedEmbedding.from_float(float_embedding(tie_weights=False))
