"""DoRA: a LoRA update whose per-output-feature magnitude is learned separately.

Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation" (2024). The adapted
kernel is `m * V / ||V||` with `V = W + scale * A @ B`, where `||V||` is the
norm of each output feature's column, taken over the kernel's fan-in axes,
and `m` is a trainable vector over the fan-out axes, initialised to `||W||`
so that the wrapped model's output is unchanged at first.
"""

from typing import Any

import keras
from keras import ops

from kerasft.layers.lora import (
    LowRankAdapter,
    assign_float_kernel,
    float_kernel,
    validate_lora_arguments,
)

# A zero column has a zero norm; dividing by this instead keeps it at zero.
_MIN_NORM = 1e-12


def scale_axes(tensor: Any, letters: str, vector: Any, vector_letters: str) -> Any:
    """Multiplies `tensor` (axes `letters`) by `vector` (axes `vector_letters`).

    An einsum, so that the vector broadcasts along the named axes whatever
    their position (e.g. a per-output-feature vector over `(n, h)` onto a
    `ndh` kernel or a `btnh` output).
    """
    vector = ops.cast(vector, tensor.dtype)
    return ops.einsum(f"{letters},{vector_letters}->{letters}", tensor, vector)


def check_linear_activation(layer: keras.Layer, method: str) -> None:
    """Raises a ValueError if `layer` applies a non-linear activation."""
    activation = getattr(layer, "activation", None)
    if activation is not None and activation is not keras.activations.linear:
        raise ValueError(
            f"{method} needs a layer without an activation (the adapter scales "
            "the pre-activation output). Received: layer="
            f"{layer.name!r} with activation={getattr(activation, '__name__', activation)!r}"
        )


@keras.saving.register_keras_serializable(package="kerasft")
class DoRADense(LowRankAdapter):
    """Weight-decomposed low-rank adaptation of a dense layer.

    Computes `x @ (m * V / ||V||) + bias` with `V = W + scale * A @ B`, where
    `A` maps the kernel's fan-in axes to `rank`, `B` maps `rank` to the fan-out
    axes (as in `LoRADense`), and the magnitude `m` (a trainable vector over
    the fan-out axes) starts as the column norms `||W||` over the fan-in axes.
    With `B = 0` at first, the output equals the wrapped layer's exactly.

    The column norm `||V||` is treated as a constant in the backward pass
    (`stop_gradient`), as recommended in section 4.3 of the DoRA paper and
    done by PEFT: the gradient then flows into `m` and into the direction
    through `V` only, which saves the memory of differentiating the norm at a
    negligible cost in accuracy. The forward value is exact either way.

    Like `LoRADense`, the update is applied to the output, not to a rebuilt
    kernel: `(m / ||V||) * (x @ W + scale * (x @ A) @ B)`. `V` itself is
    materialised once per call (in float32, kernel-sized) to take its norm.

    Args:
        layer: a built `keras.layers.Dense` or `keras.layers.EinsumDense` (or a
            kerasft quantized dense layer) with no activation.
        rank: the rank of the update, a positive integer.
        alpha: the scaling numerator, a positive number.
        dropout: dropout rate on the low-rank branch's input, in [0, 1).
        use_rslora: scale by `alpha / sqrt(rank)` instead of `alpha / rank`.
        target_path: the path of the wrapped layer in its model.
        **kwargs: base `Layer` arguments (`name`, ...).
    """

    name_suffix = "dora"

    def __init__(
        self,
        layer,
        rank=8,
        alpha=16.0,
        dropout=0.0,
        use_rslora=False,
        target_path=None,
        **kwargs,
    ):
        validate_lora_arguments(rank, alpha, dropout)
        check_linear_activation(layer, "DoRA")
        super().__init__(
            layer, rank=rank, alpha=alpha, dropout=dropout, use_rslora=use_rslora,
            target_path=target_path, **kwargs,
        )

    def build(self, input_shape=None):
        axes = self.axes
        # The norm of V wants A and B in float32; `call` casts them itself.
        self.build_low_rank_factors(autocast=False)
        self.magnitude = self.add_weight(
            name="magnitude",
            shape=axes.shape_of(axes.fan_out_letters),
            initializer="zeros",
            autocast=False,
        )
        self.magnitude.assign(self._column_norm(self._computed_kernel()))
        self.built = True

    def _column_norm(self, kernel):
        """Norm of each output feature's column over the fan-in axes."""
        letters = self.axes.kernel_letters
        fan_in_axes = tuple(letters.index(c) for c in self.axes.fan_in_letters)
        # The remaining axes are the fan-out letters in kernel order.
        return ops.sqrt(ops.sum(ops.square(kernel), axis=fan_in_axes))

    def _computed_kernel(self):
        """The kernel as the wrapped layer computes with it, in float32.

        Under a mixed policy the layer multiplies by its float32 kernel cast
        to the compute dtype; taking norms of that same rounded kernel (inside
        or outside `call`) makes `m / ||W||` exactly 1 at initialisation.
        """
        return ops.cast(ops.cast(float_kernel(self.layer), self.layer.compute_dtype), "float32")

    def magnitude_factor(self) -> Any:
        """`m / ||W + scale * A @ B||` per output feature, in float32."""
        norm = self._column_norm(self._computed_kernel() + self.delta_kernel())
        norm = ops.stop_gradient(ops.maximum(norm, _MIN_NORM))
        return ops.cast(self.magnitude, "float32") / norm

    def call(self, inputs, training=None):
        outputs = self.layer(inputs)
        if self.merged:
            return outputs
        bias = getattr(self.layer, "bias", None)
        if bias is not None:
            outputs = outputs - ops.cast(bias, outputs.dtype)
        hidden = inputs
        if self.dropout_layer is not None:
            hidden = self.dropout_layer(hidden, training=training)
        # The weights do not autocast (the norm wants them in float32), so the
        # branch casts them to the compute dtype itself.
        a = ops.cast(self.lora_a, self.compute_dtype)
        b = ops.cast(self.lora_b, self.compute_dtype)
        hidden = ops.einsum(self.axes.down_equation, hidden, a)
        update = ops.einsum(self.axes.up_equation, hidden, b)
        outputs = outputs + ops.cast(self.scale, update.dtype) * ops.cast(update, outputs.dtype)
        outputs = scale_axes(
            outputs, self.axes.output_letters, self.magnitude_factor(), self.axes.fan_out_letters
        )
        if bias is not None:
            outputs = outputs + ops.cast(bias, outputs.dtype)
        return outputs

    def merged_kernel(self) -> Any:
        """`m * V / ||V||` in the wrapped kernel's shape, in float32."""
        kernel = float_kernel(self.layer) + self.delta_kernel()
        return scale_axes(
            kernel, self.axes.kernel_letters, self.magnitude_factor(), self.axes.fan_out_letters
        )

    def merge(self) -> bool:
        """Writes `m * V / ||V||` into the wrapped kernel. A no-op if already merged.

        Returns:
            True if the kernel changed, False if it was already merged.
        """
        if self.merged:
            return False
        assign_float_kernel(self.layer, self.merged_kernel())
        self.merged = True
        return True
