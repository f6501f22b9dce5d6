"""A LoRA adapter that wraps a frozen `Dense` or `EinsumDense` layer."""

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from kerasft.einsum import kernel_axes
from kerasft.layers.wrapper import AdapterWrapper
from kerasft.targeting import kernel_variable


def adapter_dtype_policy(compute_dtype: str) -> keras.DTypePolicy:
    """Float32 adapter weights, computing in the wrapped layer's dtype.

    Adapter weights stay float32 under `bfloat16` and `float16` compute so that
    small optimizer updates are not rounded away (PITFALLS #10).
    """
    compute_dtype = keras.backend.standardize_dtype(compute_dtype)
    if compute_dtype == "float32":
        return keras.DTypePolicy("float32")
    if compute_dtype in ("bfloat16", "float16"):
        return keras.DTypePolicy(f"mixed_{compute_dtype}")
    return keras.DTypePolicy(compute_dtype)


def validate_lora_arguments(rank, alpha, dropout):
    """Raises a `ValueError` naming the first bad LoRA hyper-parameter.

    `rank` may be a Python or NumPy integer (also a float with an integral
    value is refused: ranks are counts); `alpha` any finite positive number.
    """
    if isinstance(rank, (bool, np.bool_)) or not isinstance(rank, (int, np.integer)) or rank <= 0:
        raise ValueError(f"`rank` must be a positive integer. Received: rank={rank!r}")
    if (
        isinstance(alpha, (bool, np.bool_))
        or not isinstance(alpha, (int, float, np.integer, np.floating))
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(
            f"`alpha` must be a finite positive number. Received: alpha={alpha!r}"
        )
    if (
        isinstance(dropout, (bool, np.bool_))
        or not isinstance(dropout, (int, float, np.integer, np.floating))
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")


def validate_flag(name: str, value: Any) -> bool:
    """`value` as a Python bool; a `ValueError` naming `name` unless it is a (NumPy) bool.

    `bool("false")` is True, so a flag read from a YAML string or a CLI must
    not be coerced.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def python_number(value: Any) -> Any:
    """A NumPy scalar as the Python int/float it holds (so configs serialise to JSON)."""
    return value.item() if isinstance(value, np.generic) else value


def float_kernel(layer: keras.Layer) -> Any:
    """The wrapped layer's kernel as a float32 tensor (dequantized if needed)."""
    if hasattr(layer, "dequantized_kernel"):
        return ops.cast(layer.dequantized_kernel(), "float32")
    return ops.cast(kernel_variable(layer), "float32")


def assign_float_kernel(layer: keras.Layer, kernel: Any) -> None:
    """Writes a float32 kernel into the layer (re-quantizing a quantized one)."""
    if hasattr(layer, "requantize"):
        layer.requantize(kernel)
        return
    variable = kernel_variable(layer)
    variable.assign(ops.cast(kernel, variable.dtype))


class LowRankAdapter(AdapterWrapper):
    """What LoRA and DoRA share: the hyper-parameters, the scale and the A/B factors.

    Subclasses set `name_suffix`, call `build_low_rank_factors()` from
    `build` and define `call` and `merge`.
    """

    name_suffix = "adapter"
    mergeable = True

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
        kwargs.setdefault("name", f"{layer.name}_{self.name_suffix}")
        kwargs.setdefault("dtype", adapter_dtype_policy(layer.compute_dtype))
        super().__init__(layer, target_path=target_path, **kwargs)
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.use_rslora = bool(use_rslora)
        self.axes = kernel_axes(layer)
        self.dropout_layer = keras.layers.Dropout(self.dropout) if self.dropout else None

    @property
    def scale(self) -> float:
        """The factor applied to `B @ A`: alpha/rank, or alpha/sqrt(rank)."""
        if self.use_rslora:
            return self.alpha / math.sqrt(self.rank)
        return self.alpha / self.rank

    def build_low_rank_factors(self, autocast: bool = True) -> None:
        """Creates `lora_a` (fan-in axes x rank) and `lora_b` (rank x fan-out axes, zeros)."""
        axes = self.axes
        # Uniform in +-1/sqrt(fan_in), the Kaiming-uniform(a=sqrt(5)) init of
        # the reference LoRA implementations.
        self.lora_a = self.add_weight(
            name="lora_a",
            shape=axes.shape_of(axes.fan_in_letters) + (self.rank,),
            initializer=keras.initializers.RandomUniform(
                -1.0 / math.sqrt(axes.fan_in), 1.0 / math.sqrt(axes.fan_in)
            ),
            autocast=autocast,
        )
        self.lora_b = self.add_weight(
            name="lora_b",
            shape=(self.rank,) + axes.shape_of(axes.fan_out_letters),
            initializer="zeros",
            autocast=autocast,
        )

    def delta_kernel(self) -> Any:
        """`scale * A @ B` in the wrapped kernel's shape, in float32."""
        a = ops.cast(self.lora_a, "float32")
        b = ops.cast(self.lora_b, "float32")
        return self.scale * ops.einsum(self.axes.delta_equation, a, b)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "rank": self.rank,
                "alpha": self.alpha,
                "dropout": self.dropout,
                "use_rslora": self.use_rslora,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kerasft")
class LoRADense(LowRankAdapter):
    """Adds a trainable low-rank update `scale * B(A(dropout(x)))` to a dense layer.

    The wrapped layer keeps its kernel and is frozen (`trainable=False`). `A` maps the kernel's fan-in
    axes to `rank` and `B` maps `rank` to its fan-out axes, whatever the
    einsum equation (e.g. Gemma's query `btd,ndh->btnh`: `A` is `(d, rank)`,
    `B` is `(rank, n, h)`). `B` starts at zero, so the wrapped model's output
    is unchanged until training moves it.

    Args:
        layer: a built `keras.layers.Dense` or `keras.layers.EinsumDense` (or a
            layer with the same `equation`/kernel interface).
        rank: the rank of the update, a positive integer.
        alpha: the scaling numerator, a positive number.
        dropout: dropout rate on the adapter's input, in [0, 1).
        use_rslora: scale by `alpha / sqrt(rank)` (rank-stabilised LoRA)
            instead of `alpha / rank`.
        target_path: the path of the wrapped layer in its model; adapter files
            key weights by it.
        **kwargs: base `Layer` arguments (`name`, ...).
    """

    name_suffix = "lora"

    def build(self, input_shape=None):
        self.build_low_rank_factors()
        self.built = True

    def call(self, inputs, training=None):
        outputs = self.layer(inputs)
        if self.merged:
            return outputs
        hidden = inputs
        if self.dropout_layer is not None:
            hidden = self.dropout_layer(hidden, training=training)
        hidden = ops.einsum(self.axes.down_equation, hidden, self.lora_a)
        update = ops.einsum(self.axes.up_equation, hidden, self.lora_b)
        return outputs + ops.cast(self.scale, update.dtype) * update

    def merge(self) -> bool:
        """Folds the update into the wrapped kernel. A no-op if already merged.

        Returns:
            True if the kernel changed, False if it was already merged.
        """
        if self.merged:
            return False
        self._add_to_kernel(self.delta_kernel())
        self.merged = True
        return True

    def unmerge(self) -> bool:
        """Takes a merged update back out of the kernel. A no-op if not merged."""
        if not self.merged:
            return False
        self._add_to_kernel(-self.delta_kernel())
        self.merged = False
        return True

    def _add_to_kernel(self, delta):
        assign_float_kernel(self.layer, float_kernel(self.layer) + delta)
