"""`QLoRADense`: a LoRA adapter over a frozen quantized (NF4/int4/int8) layer.

Over a quantized layer it may also hold a frozen low-rank correction of the
quantization error (`residual_rank`), which `kerasft.recipes.QLoRA` fits;
merging into a quantized layer requantizes it, and says so.
"""

import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from kerasft.layers.lora import LoRADense
from kerasft.quantization.quantized_dense import QuantizedEinsumDense


REQUANTIZE_WARNING = (
    "Merging a LoRA adapter into a quantized layer requantizes it "
    "(dequantize, add the update, round again): the merged model is not equal to "
    "the adapter model. Measure the logit difference, or use "
    "`kerasft.recipes.QLoRA().merge(model)` for an exact float merge."
)


def validate_residual_rank(residual_rank):
    """Raises a ValueError naming `residual_rank` unless it is a (NumPy) int >= 0."""
    if (
        isinstance(residual_rank, (bool, np.bool_))
        or not isinstance(residual_rank, (int, np.integer))
        or residual_rank < 0
    ):
        raise ValueError(
            "`residual_rank` must be a non-negative integer. Received: "
            f"residual_rank={residual_rank!r}"
        )


@keras.saving.register_keras_serializable(package="kerasft")
class QLoRADense(LoRADense):
    """A `LoRADense` over a quantized layer; merging it warns that it requantizes.

    Args:
        layer, rank, alpha, dropout, use_rslora, target_path: as `LoRADense`.
        residual_rank: over a quantized layer, the rank of a frozen low-rank
            correction `x @ residual_a @ residual_b` added to the base, which
            `QLoRA.apply` fits to the quantization error. 0 for none; always
            0 over a float layer.
        **kwargs: base `Layer` arguments.
    """

    def __init__(self, layer, residual_rank=0, **kwargs):
        super().__init__(layer, **kwargs)
        validate_residual_rank(residual_rank)
        self.residual_rank = residual_rank if hasattr(layer, "requantize") else 0

    def build(self, input_shape=None):
        super().build(input_shape)
        if self.residual_rank:
            axes = self.axes
            self.residual_a = self.add_weight(
                name="residual_a",
                shape=axes.shape_of(axes.fan_in_letters) + (self.residual_rank,),
                initializer="zeros", trainable=False,
            )
            self.residual_b = self.add_weight(
                name="residual_b",
                shape=(self.residual_rank,) + axes.shape_of(axes.fan_out_letters),
                initializer="zeros", trainable=False,
            )

    def call(self, inputs, training=None):
        outputs = super().call(inputs, training=training)
        if not self.residual_rank:
            return outputs
        hidden = ops.einsum(self.axes.down_equation, inputs, self.residual_a)
        correction = ops.einsum(self.axes.up_equation, hidden, self.residual_b)
        return outputs + ops.cast(correction, outputs.dtype)

    def residual_kernel(self):
        """The frozen correction `residual_a @ residual_b` in the kernel's shape, or None."""
        if not self.residual_rank:
            return None
        a = ops.cast(self.residual_a, "float32")
        b = ops.cast(self.residual_b, "float32")
        return ops.einsum(self.axes.delta_equation, a, b)

    def merged_layer(self, requantize: bool = True, **options: Any) -> keras.Layer:
        """The layer replacing this wrapper: base + frozen correction + update.

        Args:
            requantize: over a quantized layer, True (what `merge()` and
                `kerasft.merge_adapters` do) rounds the sum into the quantized
                layer again (smaller, not exact; warns); False returns a float
                `EinsumDense`/`Dense` holding it (`QuantizedEinsumDense.to_float`),
                an exact merge. Over a float layer: the LoRA merge.
            **options: ignored (other wrappers' options).
        """
        layer = self.layer
        if not isinstance(layer, QuantizedEinsumDense):
            return super().merged_layer()
        kernel = ops.cast(layer.dequantized_kernel("float32"), "float32")
        if not self.merged:
            kernel = kernel + self.delta_kernel()
        residual = self.residual_kernel()
        if residual is not None:
            kernel = kernel + residual
        if not requantize:
            return layer.to_float(kernel)
        warnings.warn(f"{self.target_path}: {REQUANTIZE_WARNING}", stacklevel=2)
        layer.requantize(kernel)  # one rounding of base + correction + update
        self.merged = True
        return layer

    def merge(self):
        if not self.merged and hasattr(self.layer, "requantize"):
            warnings.warn(f"{self.target_path}: {REQUANTIZE_WARNING}", stacklevel=2)
        return super().merge()

    def get_config(self):
        config = super().get_config()
        config["residual_rank"] = self.residual_rank
        return config
