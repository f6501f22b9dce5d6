"""(IA)^3: a learned vector that rescales a dense layer's outputs or inputs."""

import keras
from keras import ops

from kerasft.layers.dora import check_linear_activation, scale_axes
from kerasft.einsum import kernel_axes
from kerasft.layers.lora import adapter_dtype_policy, assign_float_kernel, float_kernel
from kerasft.layers.wrapper import AdapterWrapper

SIDES = ("output", "input")


@keras.saving.register_keras_serializable(package="kerasft")
class IA3Dense(AdapterWrapper):
    """Rescales a frozen dense layer's output or input features by a learned vector.

    Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and
    Cheaper than In-Context Learning" (2022). The vector starts at ones, so
    the output is unchanged at first.

    - `side="output"`: `y = layer(x) * l`, `l` over the kernel's fan-out axes
      (for Gemma's key/value kernels `kdh`: `l` has shape `(k, h)`).
      Merging multiplies the kernel's output columns (and the bias) by `l`.
    - `side="input"`: `y = layer(x * l)`, `l` over the kernel's fan-in axes
      (for Gemma's `ffw_linear`, the gated feed-forward activations).
      Merging multiplies the kernel's input rows by `l`.

    Args:
        layer: a built `keras.layers.Dense` or `keras.layers.EinsumDense` (or a
            kerasft quantized dense layer) with no activation.
        side: `"output"` or `"input"`: which features the vector scales.
        target_path: the path of the wrapped layer in its model.
        **kwargs: base `Layer` arguments (`name`, ...).
    """

    mergeable = True

    def __init__(self, layer, side="output", target_path=None, **kwargs):
        if side not in SIDES:
            raise ValueError(f"`side` must be one of {SIDES}. Received: side={side!r}")
        check_linear_activation(layer, "IA3")
        kwargs.setdefault("name", f"{layer.name}_ia3")
        kwargs.setdefault("dtype", adapter_dtype_policy(layer.compute_dtype))
        super().__init__(layer, target_path=target_path, **kwargs)
        self.side = side
        self.axes = kernel_axes(layer)
        bias = getattr(layer, "bias", None)
        fan_out_shape = self.axes.shape_of(self.axes.fan_out_letters)
        if side == "output" and bias is not None and tuple(bias.shape) != fan_out_shape:
            # A bias over only some output axes could not absorb the vector.
            raise ValueError(
                "IA3 on the output needs a bias over every output feature axis. "
                f"Received: layer={layer.name!r} with bias shape {tuple(bias.shape)}"
            )

    @property
    def vector_letters(self) -> str:
        """The kernel letters the vector spans (fan-out or fan-in, kernel order)."""
        if self.side == "output":
            return self.axes.fan_out_letters
        return self.axes.fan_in_letters

    def build(self, input_shape=None):
        # Not named "*scale*": kerasft.optimizers would then exempt it from
        # weight decay, and with every trainable weight exempt the torch
        # AdamW step fails on an empty tensor list.
        self.ia3_vector = self.add_weight(
            name="ia3_vector",
            shape=self.axes.shape_of(self.vector_letters),
            initializer="ones",
        )
        self.built = True

    def call(self, inputs):
        if self.merged:
            return self.layer(inputs)
        if self.side == "input":
            scaled = scale_axes(inputs, self.axes.input_letters, self.ia3_vector, self.vector_letters)
            return self.layer(scaled)
        outputs = self.layer(inputs)
        return scale_axes(outputs, self.axes.output_letters, self.ia3_vector, self.vector_letters)

    def merge(self) -> bool:
        """Multiplies the kernel (and, for `side="output"`, the bias) by the vector.

        Returns:
            True if the kernel changed, False if it was already merged.
        """
        if self.merged:
            return False
        vector = ops.cast(self.ia3_vector, "float32")
        kernel = scale_axes(
            float_kernel(self.layer), self.axes.kernel_letters, vector, self.vector_letters
        )
        assign_float_kernel(self.layer, kernel)
        bias = getattr(self.layer, "bias", None)
        if bias is not None and self.side == "output":
            bias.assign(ops.cast(ops.cast(bias, "float32") * vector, bias.dtype))
        self.merged = True
        return True

    def get_config(self):
        config = super().get_config()
        config["side"] = self.side
        return config
