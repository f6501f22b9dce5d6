"""`GGUFEmbedding`: a tied token embedding that stays in its GGUF block type.

Gemma ties the token embedding to the output head (`ReversibleEmbedding`);
in a llama.cpp Gemma 3 GGUF `token_embd.weight` is `(vocabulary, hidden)`,
quantized along `hidden`. A lookup dequantizes only the gathered rows; the
reversed call (the logits) dequantizes the table into the compute dtype
and multiplies by it, as llama.cpp does.
"""

from typing import Any

import keras
import numpy as np
from keras import ops

from kerasft.quantization import gguf_blocks
from kerasft.quantization.gguf_dense import float_values
from kerasft.targeting import parent_path, place_under


@keras.saving.register_keras_serializable(package="kerasft")
class GGUFEmbedding(keras.layers.Layer):
    """A frozen embedding table held as GGUF rows, usable reversed for tied logits.

    Args:
        input_dim: vocabulary size (rows).
        output_dim: embedding size (values per row).
        tensor_type: GGUF type name, e.g. `"Q8_0"` or `"Q6_K"`.
        logit_soft_cap: if set, reversed outputs are `tanh(logits / cap) * cap`,
            as in `keras_hub.layers.ReversibleEmbedding`.
        reverse_dtype: dtype of the reversed projection (None: compute dtype).
        **kwargs: base `Layer` arguments.
    """

    def __init__(
        self, input_dim, output_dim, tensor_type, logit_soft_cap=None, reverse_dtype=None,
        **kwargs,
    ):  # fmt: skip
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.tensor_type = gguf_blocks.check_tensor_type(tensor_type)
        self.row_bytes = gguf_blocks.row_bytes(self.tensor_type, self.output_dim)
        self.logit_soft_cap = logit_soft_cap
        self.reverse_dtype = reverse_dtype

    def build(self, input_shape=None):
        self.blocks = self.add_weight(
            name="blocks",
            shape=(self.input_dim, self.row_bytes),
            dtype=gguf_blocks.storage_dtype(self.tensor_type),
            initializer="zeros",
            trainable=False,
            autocast=False,
        )
        self.built = True

    @classmethod
    def from_gguf(cls, layer: keras.layers.Embedding, data: Any, tensor_type: Any):
        """A built `GGUFEmbedding` standing for the tied embedding `layer`.

        `layer`'s table is never read (it may be an uninitialized, deferred
        variable); the new layer keeps its name, dtype policy and paths.

        Raises:
            ValueError: for an untied `ReversibleEmbedding` or another layer.
        """
        if not isinstance(layer, keras.layers.Embedding) or getattr(layer, "tie_weights", True) is False:
            raise ValueError(
                "Only a tied `keras.layers.Embedding`/`ReversibleEmbedding` can hold a "
                f"GGUF table. Received: layer={getattr(layer, 'name', layer)!r}"
            )
        embedding = cls(
            layer.input_dim, layer.output_dim, tensor_type,
            logit_soft_cap=getattr(layer, "logit_soft_cap", None),
            reverse_dtype=getattr(layer, "reverse_dtype", None),
            dtype=layer.dtype_policy, name=layer.name,
        )  # fmt: skip
        if layer.path and "/" in layer.path:
            place_under(embedding, parent_path(layer.path))
        embedding.build()
        embedding.assign_gguf(data)
        return embedding

    def assign_gguf(self, data: Any) -> None:
        """Stores the GGUF table `(input_dim, row_bytes)` as it is (no rounding)."""
        data = np.asarray(data)
        if self.tensor_type in gguf_blocks.FLOAT_TYPES:
            data = float_values(data, self.tensor_type)
        expected = (self.input_dim, self.row_bytes)
        if tuple(data.shape) != expected:
            raise ValueError(
                f"{self.tensor_type} data for {self.name!r} must have shape {expected}. "
                f"Received: data.shape={tuple(data.shape)}"
            )
        self.blocks.assign(data)

    def gguf_data(self) -> np.ndarray:
        """The table as a GGUF file holds it (see `gguf_dense.quantize_gguf_rows`)."""
        from kerasft.quantization.gguf_dense import quantize_gguf_rows

        if self.tensor_type == "BF16":
            return quantize_gguf_rows(ops.convert_to_numpy(self.dequantized_embeddings()), "BF16")
        return ops.convert_to_numpy(self.blocks)

    def dequantized_embeddings(self, dtype: str = "float32") -> Any:
        """The float `(input_dim, output_dim)` table."""
        rows = gguf_blocks.dequantize_rows(self.blocks, self.tensor_type, self.output_dim)
        return ops.cast(rows, dtype)

    def call(self, inputs, reverse=False):
        if not reverse:
            rows = ops.take(self.blocks, ops.cast(inputs, "int32"), axis=0)
            values = gguf_blocks.dequantize_rows(rows, self.tensor_type, self.output_dim)
            return ops.cast(values, self.compute_dtype)
        dtype = self.reverse_dtype or self.compute_dtype
        table = self.dequantized_embeddings(dtype)
        logits = ops.matmul(ops.cast(inputs, dtype), ops.transpose(table))
        if self.logit_soft_cap is not None:
            cap = self.logit_soft_cap
            logits = ops.tanh(logits / cap) * cap
        return logits

    def compute_output_spec(self, inputs, reverse=False):
        # As `ReversibleEmbedding`: the symbolic call of the tied head.
        if reverse:
            shape = tuple(inputs.shape[:-1]) + (self.input_dim,)
            dtype = self.reverse_dtype or self.compute_dtype
        else:
            shape, dtype = tuple(inputs.shape) + (self.output_dim,), self.compute_dtype
        return keras.KerasTensor(shape, dtype=dtype)

    def quantized_bytes(self) -> int:
        """Bytes of the stored table."""
        return gguf_blocks.tensor_bytes(self.tensor_type, (self.input_dim, self.output_dim))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "tensor_type": self.tensor_type,
                "logit_soft_cap": self.logit_soft_cap,
                "reverse_dtype": self.reverse_dtype,
            }
        )
        return config
