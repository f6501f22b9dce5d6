"""`QuantizedEinsumDense`: a weight-only quantized `Dense` / `EinsumDense`.

The kernel is stored as integer codes plus per-group scales (and zero points)
in non-trainable variables, and dequantized on the fly into the compute dtype
with `keras.ops`, so the layer runs on JAX and PyTorch and gives the same
output as the float layer up to the quantization error.
"""

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from kerasft.einsum import parse_equation
from kerasft.quantization.codebooks import nf4_codebook
from kerasft.quantization.float_layers import float_layer, float_layer_spec
from kerasft.quantization.packing import pack_int4, packed_length, unpack_int4_ops
from kerasft.quantization.quantizers import (
    DOUBLE_QUANT_BLOCK_SIZE,
    QuantizedMatrix,
    quantize_matrix,
    quantized_kernel_bytes,
    resolve_group_size,
    validate_scheme,
)
from kerasft.targeting import build_input_shape, parent_path, place_under

_DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "int32": 4,
    "int8": 1,
    "uint8": 1,
}


def _dtype_bytes(dtype):
    name = keras.backend.standardize_dtype(dtype)
    if name not in _DTYPE_BYTES:
        raise ValueError(f"Unsupported dtype for byte counting. Received: dtype={dtype!r}")
    return _DTYPE_BYTES[name]


@keras.saving.register_keras_serializable(package="kerasft")
class QuantizedEinsumDense(keras.layers.Layer):
    """A dense layer whose kernel is stored quantized (weight-only).

    Computes `activation(einsum(equation, inputs, kernel) + bias)` like
    `keras.layers.EinsumDense` (a `Dense` layer is the equation
    `"...i,io->...o"`), where `kernel` is reconstructed from integer codes at
    every call. The contracted kernel axes (letters in the input and the
    kernel but not the output) are flattened to `K` rows and the other axes to
    `N` columns; scales are shared by groups of `group_size` consecutive rows
    in each column.

    Schemes (`mode`):
        - `"int8"`: `w = q * s` (or `(q - z) * s` if `asymmetric`), 1 byte per
          weight; per output channel by default.
        - `"int4"`: the same with 4-bit codes packed two per byte.
        - `"nf4"`: `w = NF4[q] * absmax` (QLoRA's NormalFloat-4 table), packed
          two per byte; `double_quantize=True` stores the scales as int8 in
          blocks of 256 with a float32 scale per block.

    Example:

    ```python
    layer = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 4, 32))
    layer.build((None, None, 128))
    quantized = QuantizedEinsumDense.from_float(layer, mode="nf4", group_size=64)
    quantized(x)  # close to layer(x)
    ```

    Args:
        equation: the einsum equation `"input,kernel->output"`.
        kernel_shape: shape of the float kernel.
        mode: `"int8"`, `"int4"` or `"nf4"`.
        group_size: rows of `K` per scale: `"auto"` (per output channel for
            int8, 64 for int4/nf4), `None`/`-1` (per output channel) or an int
            dividing `K`.
        asymmetric: integer modes: add a zero point per group, so the codes
            span `[min, max]` instead of `[-absmax, absmax]`.
        double_quantize: store the scales as int8 in blocks of 256, each block
            with a float32 scale, around their float32 mean.
        scale_dtype: storage dtype of the scales without double quantization,
            `"float32"` or `"float16"`.
        bias_shape: shape of the bias, or None for no bias.
        activation: activation applied to the output.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(
        self,
        equation,
        kernel_shape,
        mode="int8",
        group_size="auto",
        asymmetric=False,
        double_quantize=False,
        scale_dtype="float32",
        bias_shape=None,
        activation=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axes = parse_equation(equation)
        self.equation = self.axes.equation
        kernel_shape = tuple(int(d) for d in kernel_shape)
        if len(kernel_shape) != len(self.axes.kernel_letters) or min(kernel_shape) <= 0:
            raise ValueError(
                "`kernel_shape` must have one positive size per kernel letter of the "
                f"equation {self.equation!r}. Received: kernel_shape={kernel_shape}"
            )
        validate_scheme(mode, asymmetric, scale_dtype)
        self.kernel_shape = kernel_shape
        self.mode = mode
        self.contracted_size = self.axes.contracted_size(kernel_shape)
        self.output_size = self.axes.output_size(kernel_shape)
        self.group_size = resolve_group_size(mode, group_size, self.contracted_size)
        self.num_groups = self.contracted_size // self.group_size
        self.asymmetric = bool(asymmetric)
        self.double_quantize = bool(double_quantize)
        self.scale_dtype = scale_dtype
        self.bias_shape = None if bias_shape is None else tuple(int(d) for d in bias_shape)
        self.activation = keras.activations.get(activation)

    # ------------------------------------------------------------------ build
    def build(self, input_shape=None):
        k, n, g = self.contracted_size, self.output_size, self.num_groups

        def add(name: str, shape: tuple[int, ...], dtype: str) -> keras.Variable:
            return self.add_weight(
                name=name,
                shape=shape,
                dtype=dtype,
                initializer="zeros",
                trainable=False,
                autocast=False,
            )

        if self.mode == "int8":
            self.kernel_codes = add("kernel_codes", (k, n), "uint8" if self.asymmetric else "int8")
        else:
            self.kernel_codes = add("kernel_codes", (packed_length(k), n), "uint8")
        if self.double_quantize:
            num_blocks = math.ceil(g * n / DOUBLE_QUANT_BLOCK_SIZE)
            self.kernel_scale_codes = add(
                "kernel_scale_codes", (num_blocks * DOUBLE_QUANT_BLOCK_SIZE,), "int8"
            )
            self.kernel_scale_block_scale = add(
                "kernel_scale_block_scale", (num_blocks,), "float32"
            )
            self.kernel_scale_offset = add("kernel_scale_offset", (1,), "float32")
        else:
            self.kernel_scale = add("kernel_scale", (g, n), self.scale_dtype)
        if self.asymmetric:
            zero_rows = g if self.mode == "int8" else packed_length(g)
            self.kernel_zero = add("kernel_zero", (zero_rows, n), "uint8")
        self.bias = None
        if self.bias_shape is not None:
            self.bias = self.add_weight(
                name="bias",
                shape=self.bias_shape,
                initializer="zeros",
                trainable=False,
            )

    # ----------------------------------------------------------- conversion
    @classmethod
    def from_float(
        cls,
        layer: keras.Layer,
        mode: str = "int8",
        group_size: int | str | None = "auto",
        asymmetric: bool = False,
        double_quantize: bool = False,
        scale_dtype: str = "float32",
    ) -> "QuantizedEinsumDense":
        """Builds a quantized copy of a float `EinsumDense` or `Dense` layer.

        The copy keeps the layer's name, dtype policy and variable paths (the
        same parent path), so it can replace the float layer in a model. The
        kernel is quantized by round-to-nearest; `assign_quantized_matrix`
        takes codes from an error-minimising method instead.

        Args:
            layer: a built `keras.layers.EinsumDense` or `keras.layers.Dense`.
            mode, group_size, asymmetric, double_quantize, scale_dtype: see
                the class.

        Returns:
            A built `QuantizedEinsumDense`.
        """
        spec = float_layer_spec(layer)
        quantized = cls(
            equation=spec["equation"],
            kernel_shape=spec["kernel"].shape,
            mode=mode,
            group_size=group_size,
            asymmetric=asymmetric,
            double_quantize=double_quantize,
            scale_dtype=scale_dtype,
            bias_shape=None if spec["bias"] is None else spec["bias"].shape,
            activation=spec["activation"],
            dtype=layer.dtype_policy,
            name=layer.name,
        )
        if layer.path and "/" in layer.path:  # the float layer's variable paths
            place_under(quantized, parent_path(layer.path))
        input_shape = build_input_shape(layer)
        quantized.build(input_shape)
        quantized.requantize(spec["kernel"])
        if spec["bias"] is not None:
            quantized.bias.assign(spec["bias"])
        return quantized

    def kernel_matrix(self, kernel: np.ndarray) -> np.ndarray:
        """Reshapes a kernel-shaped array to the `(K, N)` matrix (numpy float64)."""
        kernel = np.asarray(kernel, dtype="float64")
        if tuple(kernel.shape) != self.kernel_shape:
            raise ValueError(
                f"The kernel must have shape {self.kernel_shape}. "
                f"Received: kernel.shape={tuple(kernel.shape)}"
            )
        matrix = np.transpose(kernel, self.axes.kernel_to_matrix_perm)
        return matrix.reshape(self.contracted_size, self.output_size)

    def requantize(self, new_float_kernel: Any) -> None:
        """Quantizes a new float kernel into this layer's variables, in place.

        Used to merge an adapter into the base: dequantize, add the update,
        requantize. Scales are recomputed (round-to-nearest).

        Args:
            new_float_kernel: array or tensor of shape `kernel_shape`.
        """
        kernel = ops.convert_to_numpy(ops.cast(new_float_kernel, "float32"))
        matrix = self.kernel_matrix(kernel)
        self.assign_quantized_matrix(
            quantize_matrix(
                matrix,
                self.mode,
                self.group_size,
                asymmetric=self.asymmetric,
                double_quantize=self.double_quantize,
                scale_dtype=self.scale_dtype,
            )
        )

    def assign_quantized_matrix(self, quantized: QuantizedMatrix) -> None:
        """Writes a `QuantizedMatrix` (codes, scales, zero points) into the variables.

        Args:
            quantized: a `QuantizedMatrix` for this layer's `(K, N)` kernel
                matrix, mode, group size and scheme.
        """
        if not isinstance(quantized, QuantizedMatrix):
            raise ValueError(
                "`quantized` must be a `QuantizedMatrix`. "
                f"Received: quantized={type(quantized).__name__}"
            )
        expected = (self.contracted_size, self.output_size)
        if tuple(quantized.codes.shape) != expected:
            raise ValueError(
                f"`quantized.codes` must have shape {expected}. "
                f"Received: shape={tuple(quantized.codes.shape)}"
            )
        if self.double_quantize != (quantized.scale_codes is not None) or (
            self.asymmetric != (quantized.zero is not None)
        ):
            raise ValueError(
                "`quantized` does not match the layer's scheme. Received: "
                f"double-quantized={quantized.scale_codes is not None}, "
                f"zero points={quantized.zero is not None} for a layer with "
                f"double_quantize={self.double_quantize}, asymmetric={self.asymmetric}"
            )
        codes = quantized.codes
        if self.mode == "int8":
            self.kernel_codes.assign(codes.astype("uint8" if self.asymmetric else "int8"))
        else:
            nibbles = codes if (self.mode == "nf4" or self.asymmetric) else codes + 8
            self.kernel_codes.assign(pack_int4(nibbles))
        if self.double_quantize:
            self.kernel_scale_codes.assign(quantized.scale_codes)
            self.kernel_scale_block_scale.assign(quantized.scale_block_scale)
            self.kernel_scale_offset.assign(quantized.scale_offset)
        else:
            self.kernel_scale.assign(quantized.scale.astype(self.scale_dtype))
        if self.asymmetric:
            zero = quantized.zero.astype("uint8")
            self.kernel_zero.assign(zero if self.mode == "int8" else pack_int4(zero))

    def quantized_matrix(self) -> QuantizedMatrix:
        """Reads the variables back into a `QuantizedMatrix` (numpy)."""
        from kerasft.quantization.packing import unpack_int4

        codes = ops.convert_to_numpy(self.kernel_codes).astype("int64")
        if self.mode != "int8":
            codes = unpack_int4(codes, self.contracted_size).astype("int64")
            if self.mode == "int4" and not self.asymmetric:
                codes = codes - 8
        zero = None
        if self.asymmetric:
            zero = ops.convert_to_numpy(self.kernel_zero)
            if self.mode != "int8":
                zero = unpack_int4(zero, self.num_groups)
            zero = zero.astype("float64")
        scale = ops.convert_to_numpy(ops.cast(self._scale_matrix(), "float32"))
        return QuantizedMatrix(codes=codes, scale=scale.astype("float64"), zero=zero)

    # ----------------------------------------------------------- dequantize
    def _scale_matrix(self):
        """The `(G, N)` float32 scales, dequantizing them if double-quantized."""
        g, n = self.num_groups, self.output_size
        if not self.double_quantize:
            return ops.cast(self.kernel_scale, "float32")
        codes = ops.cast(self.kernel_scale_codes, "float32")
        codes = ops.reshape(codes, (-1, DOUBLE_QUANT_BLOCK_SIZE))
        flat = ops.reshape(codes * self.kernel_scale_block_scale[:, None], (-1,))
        flat = flat + self.kernel_scale_offset[0]
        return ops.reshape(flat[: g * n], (g, n))

    def _dequantized_matrix(self, dtype="float32"):
        """The `(K, N)` kernel matrix, computed in float32 and cast to `dtype`."""
        k, n, g = self.contracted_size, self.output_size, self.num_groups
        if self.mode == "int8":
            values = ops.cast(self.kernel_codes, "float32")
        else:
            codes = unpack_int4_ops(self.kernel_codes, k)
            if self.mode == "nf4":
                values = ops.take(ops.convert_to_tensor(nf4_codebook()), codes, axis=0)
            else:
                values = ops.cast(codes, "float32")
        values = ops.reshape(values, (g, self.group_size, n))
        if self.asymmetric:
            zero = self.kernel_zero
            if self.mode != "int8":
                zero = unpack_int4_ops(zero, g)
            values = values - ops.cast(zero, "float32")[:, None, :]
        elif self.mode == "int4":
            values = values - 8.0
        kernel = values * self._scale_matrix()[:, None, :]
        return ops.cast(ops.reshape(kernel, (k, n)), dtype)

    def to_float(self, kernel: Any = None) -> keras.Layer:
        """A float `EinsumDense` / `Dense` computing what this layer computes.

        Args:
            kernel: the float kernel to hold (e.g. this layer's dequantized
                kernel plus an adapter's update); default the dequantized one.

        Returns:
            A built layer with this layer's equation, bias, activation, name,
            dtype policy and variable paths.
        """
        return float_layer(self, self.dequantized_kernel("float32") if kernel is None else kernel)

    def dequantized_kernel(self, dtype: str = "float32") -> Any:
        """The float kernel, in the original `kernel_shape` and axis order.

        Args:
            dtype: dtype of the result (float32 by default, for merging).

        Returns:
            A backend tensor of shape `kernel_shape`.
        """
        matrix = self._dequantized_matrix(dtype)
        kernel = ops.reshape(matrix, self.axes.matrix_kernel_shape(self.kernel_shape))
        return ops.transpose(kernel, self.axes.matrix_to_kernel_perm)

    def call(self, inputs):
        kernel = self._dequantized_matrix(self.compute_dtype)
        kernel = ops.reshape(kernel, self.axes.matrix_kernel_shape(self.kernel_shape))
        outputs = ops.einsum(self.axes.matrix_equation, inputs, kernel)
        if self.bias is not None:
            outputs = outputs + ops.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.axes.output_shape(input_shape, self.kernel_shape)

    # ---------------------------------------------------------------- sizes
    def quantized_bytes(self) -> int:
        """Bytes of all this layer's variables (codes, scales, zero points, bias)."""
        return int(sum(math.prod(v.shape) * _dtype_bytes(v.dtype) for v in self.variables))

    def expected_quantized_bytes(self) -> int:
        """`quantized_bytes()` from the analytic formula (`quantized_kernel_bytes`)."""
        return quantized_kernel_bytes(
            self.contracted_size,
            self.output_size,
            self.mode,
            self.group_size,
            self.asymmetric,
            self.double_quantize,
            self.scale_dtype,
        ) + self._bias_bytes()

    def float_bytes(self, dtype: str = "bfloat16") -> int:
        """Bytes the float layer's kernel (and bias) take in `dtype`."""
        return self.contracted_size * self.output_size * _dtype_bytes(dtype) + (
            self._bias_bytes()
        )

    def _bias_bytes(self):
        if self.bias_shape is None:
            return 0
        return math.prod(self.bias_shape) * _dtype_bytes(self.variable_dtype)

    # -------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "equation": self.equation,
                "kernel_shape": list(self.kernel_shape),
                "mode": self.mode,
                "group_size": self.group_size,
                "asymmetric": self.asymmetric,
                "double_quantize": self.double_quantize,
                "scale_dtype": self.scale_dtype,
                "bias_shape": None if self.bias_shape is None else list(self.bias_shape),
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config
