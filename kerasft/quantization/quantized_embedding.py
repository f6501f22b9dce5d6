"""`QuantizedEmbedding`: an int8 `ReversibleEmbedding` for lookups and tied logits.

Each vocabulary row gets one float32 absmax scale. The same per-row scale
serves both directions: a lookup dequantizes only the gathered rows, and the
reversed (tied output head) projection computes `(x @ codes^T) * scale`, so
the `[vocab, hidden]` float table is never materialised.
"""

from typing import Any

import keras
import numpy as np
from keras import ops

from kerasft.targeting import parent_path, place_under


@keras.saving.register_keras_serializable(package="kerasft")
class QuantizedEmbedding(keras.layers.Layer):
    """An int8 per-row quantized embedding, usable reversed for tied logits.

    Args:
        input_dim: vocabulary size.
        output_dim: embedding size.
        logit_soft_cap: if set, reversed outputs are
            `tanh(logits / cap) * cap`, as in `ReversibleEmbedding`.
        reverse_dtype: dtype of the reversed projection (None: compute dtype).
        **kwargs: base `Layer` arguments.
    """

    def __init__(self, input_dim, output_dim, logit_soft_cap=None, reverse_dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.logit_soft_cap = logit_soft_cap
        self.reverse_dtype = reverse_dtype

    def build(self, input_shape=None):
        self.embeddings_codes = self.add_weight(
            name="embeddings_codes", shape=(self.input_dim, self.output_dim), dtype="int8",
            initializer="zeros", trainable=False, autocast=False,
        )
        self.embeddings_scale = self.add_weight(
            name="embeddings_scale", shape=(self.input_dim,), dtype="float32",
            initializer="ones", trainable=False, autocast=False,
        )

    @classmethod
    def from_float(cls, layer: keras.layers.Embedding) -> "QuantizedEmbedding":
        """Quantizes a built, tied `ReversibleEmbedding` (or `Embedding`).

        Raises:
            ValueError: for an untied `ReversibleEmbedding` (its separate
                output matrix is not handled) or another layer type.
        """
        if not isinstance(layer, keras.layers.Embedding) or not layer.built:
            raise ValueError(
                "Only a built `keras.layers.Embedding`/`ReversibleEmbedding` can be "
                f"quantized. Received: layer={getattr(layer, 'name', layer)!r}"
            )
        if getattr(layer, "tie_weights", True) is False:
            raise ValueError(
                "Only tied reversible embeddings are supported. Received: "
                f"layer={layer.name!r} with tie_weights=False"
            )
        quantized = cls(
            layer.input_dim, layer.output_dim,
            logit_soft_cap=getattr(layer, "logit_soft_cap", None),
            reverse_dtype=getattr(layer, "reverse_dtype", None),
            dtype=layer.dtype_policy, name=layer.name,
        )
        if layer.path and "/" in layer.path:
            place_under(quantized, parent_path(layer.path))
        quantized.build()
        quantized.requantize(layer.embeddings)
        return quantized

    def requantize(self, embeddings: Any) -> None:
        """Quantizes a float `(input_dim, output_dim)` table into the variables."""
        table = np.asarray(ops.convert_to_numpy(ops.cast(embeddings, "float32")), "float64")
        if table.shape != (self.input_dim, self.output_dim):
            raise ValueError(
                f"`embeddings` must have shape {(self.input_dim, self.output_dim)}. "
                f"Received: embeddings.shape={table.shape}"
            )
        scale = np.abs(table).max(axis=1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype("float32")
        codes = np.clip(np.round(table / scale[:, None].astype("float64")), -127, 127)
        self.embeddings_codes.assign(codes.astype("int8"))
        self.embeddings_scale.assign(scale)

    def dequantized_embeddings(self, dtype: str = "float32") -> Any:
        """The float `(input_dim, output_dim)` table."""
        table = ops.cast(self.embeddings_codes, "float32") * self.embeddings_scale[:, None]
        return ops.cast(table, dtype)

    def call(self, inputs, reverse=False):
        if not reverse:
            ids = ops.cast(inputs, "int32")
            rows = ops.cast(ops.take(self.embeddings_codes, ids, axis=0), "float32")
            scale = ops.take(self.embeddings_scale, ids, axis=0)
            return ops.cast(rows * scale[..., None], self.compute_dtype)
        dtype = self.reverse_dtype or self.compute_dtype
        codes = ops.cast(self.embeddings_codes, dtype)  # int8 values are exact in bf16
        logits = ops.matmul(ops.cast(inputs, dtype), ops.transpose(codes))
        logits = logits * ops.cast(self.embeddings_scale, dtype)
        if self.logit_soft_cap is not None:
            cap = self.logit_soft_cap
            logits = ops.tanh(logits / cap) * cap
        return logits

    def compute_output_shape(self, input_shape, reverse=False):
        if reverse:
            return tuple(input_shape[:-1]) + (self.input_dim,)
        return tuple(input_shape) + (self.output_dim,)

    def quantized_bytes(self) -> int:
        """Bytes of the int8 codes and float32 row scales."""
        return self.input_dim * self.output_dim + 4 * self.input_dim

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "logit_soft_cap": self.logit_soft_cap,
                "reverse_dtype": self.reverse_dtype,
            }
        )
        return config
