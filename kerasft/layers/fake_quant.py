"""Fake quantization for quantization-aware training (QAT).

`FakeQuantDense` wraps a float `Dense`/`EinsumDense` and, in every forward
pass, replaces its kernel by the kernel quantized and dequantized with the same
round-to-nearest scheme as `kerasft.quantization.QuantizedEinsumDense`. The
rounding is bypassed in the backward pass (straight-through estimator,
`w + stop_gradient(q(w) - w)`), so the float kernel keeps training while the
loss sees the quantized weights.
"""

from typing import Any

import keras
from keras import ops

from kerasft.einsum import layer_equation, parse_equation
from kerasft.layers.wrapper import AdapterWrapper
from kerasft.targeting import kernel_variable
from kerasft.quantization.codebooks import nf4_codebook
from kerasft.quantization.quantizers import mode_bits, resolve_group_size, validate_scheme


def fake_quantize_matrix(
    matrix: Any, mode: str, group_size: int, asymmetric: bool = False
) -> Any:
    """Quantize-dequantize a `(K, N)` float32 matrix with round-to-nearest.

    The same scheme as `kerasft.quantization.quantizers.quantize_matrix`
    with float32 scales: absmax group scales (`asymmetric`: min/max with a
    zero point), codes rounded half-to-even, NF4 to the nearest table value.

    Args:
        matrix: a float tensor `(K, N)`.
        mode: `"int8"`, `"int4"` or `"nf4"`.
        group_size: rows per scale; divides `K`.
        asymmetric: integer modes: zero points per group.

    Returns:
        The dequantized float32 `(K, N)` tensor (no gradient defined through
        the rounding; wrap it with a straight-through estimator).
    """
    matrix = ops.cast(matrix, "float32")
    k, n = matrix.shape
    groups = ops.reshape(matrix, (k // group_size, group_size, n))
    if asymmetric:
        qmax = float(2 ** mode_bits(mode) - 1)
        low = ops.minimum(ops.min(groups, axis=1), 0.0)
        high = ops.maximum(ops.max(groups, axis=1), 0.0)
        scale = (high - low) / qmax
        scale = ops.where(scale > 0, scale, ops.ones_like(scale))[:, None, :]
        zero = ops.clip(ops.round(-low[:, None, :] / scale), 0.0, qmax)
        codes = ops.clip(ops.round(groups / scale + zero), 0.0, qmax)
        values = (codes - zero) * scale
    else:
        absmax = ops.max(ops.abs(groups), axis=1)
        if mode == "nf4":
            scale = absmax
        else:
            scale = absmax / float(2 ** (mode_bits(mode) - 1) - 1)
        scale = ops.where(scale > 0, scale, ops.ones_like(scale))[:, None, :]
        x = groups / scale
        if mode == "nf4":
            table = nf4_codebook("float32")
            midpoints = ops.convert_to_tensor((table[1:] + table[:-1]) / 2.0)
            # The index of the nearest value: how many midpoints lie below x
            # (numpy's `searchsorted(midpoints, x)`, as the offline quantizer).
            index = ops.sum(ops.cast(x[..., None] > midpoints, "int32"), axis=-1)
            codes = ops.take(ops.convert_to_tensor(table), index, axis=0)
        else:
            qmax = float(2 ** (mode_bits(mode) - 1) - 1)
            codes = ops.clip(ops.round(x), -qmax - 1.0, qmax)
        values = codes * scale
    return ops.reshape(values, (k, n))


@keras.saving.register_keras_serializable(package="kerasft")
class FakeQuantDense(AdapterWrapper):
    """Trains a dense layer's float kernel through its quantized forward pass.

    The wrapped layer's kernel stays trainable (the layer itself is not
    called); its bias, if any, is frozen. Its merged layer
    (`merged_layer`, what `QAT().merge` / `QAT.convert` put in its place) is
    a `QuantizedEinsumDense` holding the same quantized kernel.

    Args:
        layer: a built float `keras.layers.Dense` or `keras.layers.EinsumDense`.
        mode: `"int8"`, `"int4"` or `"nf4"`.
        group_size: `"auto"`, None (per output channel) or an int dividing
            the contracted size (see `QuantizedEinsumDense`).
        asymmetric: integer modes: zero points per group.
        target_path: the wrapped layer's path in its model.
        **kwargs: base `Layer` arguments.
    """

    mergeable = True

    def __init__(
        self, layer, mode="int8", group_size="auto", asymmetric=False, target_path=None, **kwargs
    ):
        if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) or (
            getattr(layer, "quantization_mode", None) is not None
        ):
            raise ValueError(
                "FakeQuantDense wraps a float `Dense` or `EinsumDense` layer. Received: "
                f"layer={layer.name!r} of type {type(layer).__name__}"
            )
        validate_scheme(mode, asymmetric)
        kwargs.setdefault("name", f"{layer.name}_fake_quant")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, target_path=target_path, **kwargs)
        self.equation = layer_equation(layer)
        self.axes = parse_equation(self.equation)
        self.kernel_shape = tuple(int(d) for d in kernel_variable(layer).shape)
        self.mode = mode
        self.asymmetric = bool(asymmetric)
        self.group_size = resolve_group_size(
            mode, group_size, self.axes.contracted_size(self.kernel_shape)
        )
        # The wrapper base froze the layer; QAT trains its kernel.
        layer.trainable = True
        for variable in layer.weights:
            variable.trainable = variable is kernel_variable(layer)
        self.built = True  # no weights of its own

    def build(self, input_shape=None):
        self.built = True

    def adapter_weights(self) -> dict[str, keras.Variable]:
        # QAT trains the wrapped layer's own kernel; it is saved by its path.
        kernel = kernel_variable(self.layer)
        return {kernel.path: kernel}

    def merged_layer(self, **options: Any) -> keras.Layer:
        """A `QuantizedEinsumDense` rounding the trained kernel with this scheme.

        The very codes the forward pass used, so its outputs equal the
        fake-quantized wrapper's (up to float rounding of the scales).
        `options` are ignored.
        """
        from kerasft.quantization.quantized_dense import QuantizedEinsumDense

        return QuantizedEinsumDense.from_float(
            self.layer, mode=self.mode, group_size=self.group_size, asymmetric=self.asymmetric
        )

    def fake_quantized_kernel(self) -> Any:
        """The kernel as the quantized layer will hold it, with a straight-through gradient."""
        kernel = ops.cast(kernel_variable(self.layer), "float32")
        axes, shape = self.axes, self.kernel_shape
        matrix = ops.reshape(
            ops.transpose(kernel, axes.kernel_to_matrix_perm),
            (axes.contracted_size(shape), axes.output_size(shape)),
        )
        quantized = fake_quantize_matrix(
            ops.stop_gradient(matrix), self.mode, self.group_size, self.asymmetric
        )
        matrix = matrix + ops.stop_gradient(quantized - matrix)
        matrix = ops.reshape(matrix, self.axes.matrix_kernel_shape(self.kernel_shape))
        return ops.transpose(matrix, self.axes.matrix_to_kernel_perm)

    def call(self, inputs):
        kernel = ops.cast(self.fake_quantized_kernel(), self.compute_dtype)
        outputs = ops.einsum(self.equation, inputs, kernel)
        bias = getattr(self.layer, "bias", None)
        if bias is not None:
            outputs = outputs + ops.cast(bias, outputs.dtype)
        if self.layer.activation is not None:
            outputs = self.layer.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {"mode": self.mode, "group_size": self.group_size, "asymmetric": self.asymmetric}
        )
        return config
