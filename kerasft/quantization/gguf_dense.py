"""`GGUFEinsumDense`: a frozen dense layer whose kernel stays in its GGUF block type.

The kernel is held as the GGUF tensor's own bytes (a `uint8` variable of shape
`(N, row_bytes)`: one GGUF row per output unit, blocks running along the
contracted axis), or as its F32/F16/BF16 values, and dequantized into the
compute dtype at every call (`kerasft.quantization.gguf_blocks`). An adapter
recipe (LoRA, DoRA, IA3, ...) wraps it like any quantized dense layer: it is a
`QuantizedEinsumDense` to the rest of kerasft (`dequantized_kernel`,
`to_float`, `requantize`, `quantized_bytes`), so training runs over exactly
the weights llama.cpp runs, at the GGUF's size in memory.
"""

from typing import Any

import keras
import numpy as np
from keras import ops

from kerasft.einsum import layer_equation, layer_kernel_shape, parse_equation
from kerasft.quantization import gguf_blocks
from kerasft.quantization.quantized_dense import QuantizedEinsumDense
from kerasft.targeting import build_input_shape, parent_path, place_under


def quantize_gguf_rows(rows: np.ndarray, tensor_type: str) -> np.ndarray:
    """Writes float rows `(N, K)` in `tensor_type` as a GGUF file holds them.

    F32 and F16 come back as float arrays, the other types as `uint8` bytes
    (`gguf.quants.quantize`), ready for `gguf.GGUFWriter.add_tensor`.

    Raises:
        ValueError: for a K-quant, which the `gguf` package cannot write.
    """
    import gguf

    tensor_type = gguf_blocks.check_tensor_type(tensor_type)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if tensor_type == "F32":
        return rows
    if tensor_type == "F16":
        return rows.astype(np.float16)
    if tensor_type not in gguf_blocks.QUANTIZABLE_BLOCK_TYPES + ("BF16",):
        raise ValueError(
            f"The `gguf` package cannot quantize to {tensor_type} (K-quants are "
            "read-only there). Received: tensor_type="
            f"{tensor_type!r}; writable types: F32, F16, BF16, "
            f"{', '.join(gguf_blocks.QUANTIZABLE_BLOCK_TYPES)}."
        )
    return gguf.quants.quantize(rows, gguf.GGMLQuantizationType[tensor_type])


def float_values(data: np.ndarray, tensor_type: str) -> np.ndarray:
    """The values of an F32/F16/BF16 tensor given as its file bytes (`uint8`)."""
    if data.dtype != np.uint8:
        return data
    if tensor_type == "BF16":  # bf16 is the top half of a float32
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return data.view(np.float32 if tensor_type == "F32" else np.float16)


@keras.saving.register_keras_serializable(package="kerasft")
class GGUFEinsumDense(QuantizedEinsumDense):
    """A dense layer computing with a GGUF tensor, dequantized on the fly.

    Computes `einsum(equation, inputs, W)` where the kernel matrix `W`
    (`K` contracted rows by `N` columns, see `kerasft.einsum`) is the
    transpose of the GGUF tensor `(N, K)`, dequantized from its blocks.
    The layer is frozen: its only weight, `blocks`, is not trainable.

    Build one from a float layer and the GGUF bytes with `from_gguf`; the
    loader `kerasft.models.gemma3_from_gguf(keep_quantized=True)` does it for
    every kernel of a Gemma 3.

    Args:
        equation: the einsum equation `"input,kernel->output"`.
        kernel_shape: shape of the float kernel.
        tensor_type: GGUF type name (`gguf_blocks.GGUF_TENSOR_TYPES`), e.g.
            `"Q4_K"`.
        activation: activation applied to the output.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(self, equation, kernel_shape, tensor_type, activation=None, **kwargs):
        keras.layers.Layer.__init__(self, **kwargs)
        self.axes = parse_equation(equation)
        self.equation = self.axes.equation
        kernel_shape = tuple(int(d) for d in kernel_shape)
        if len(kernel_shape) != len(self.axes.kernel_letters) or min(kernel_shape) <= 0:
            raise ValueError(
                "`kernel_shape` must have one positive size per kernel letter of the "
                f"equation {self.equation!r}. Received: kernel_shape={kernel_shape}"
            )
        self.tensor_type = gguf_blocks.check_tensor_type(tensor_type)
        self.kernel_shape = kernel_shape
        self.contracted_size = self.axes.contracted_size(kernel_shape)
        self.output_size = self.axes.output_size(kernel_shape)
        self.row_bytes = gguf_blocks.row_bytes(self.tensor_type, self.contracted_size)
        # What `QuantizedEinsumDense` readers (adapter files, reports) look at.
        self.mode = self.tensor_type
        self.group_size = gguf_blocks.BLOCK_SIZES.get(self.tensor_type, (1, 0))[0]
        self.num_groups = self.contracted_size // self.group_size
        self.asymmetric = False
        self.double_quantize = False
        self.scale_dtype = "float16"
        self.bias_shape = None
        self.bias = None
        self.activation = keras.activations.get(activation)

    def build(self, input_shape=None):
        self.blocks = self.add_weight(
            name="blocks",
            shape=(self.output_size, self.row_bytes),
            dtype=gguf_blocks.storage_dtype(self.tensor_type),
            initializer="zeros",
            trainable=False,
            autocast=False,
        )
        self.built = True

    @classmethod
    def from_gguf(cls, layer: keras.Layer, data: Any, tensor_type: Any) -> "GGUFEinsumDense":
        """A built `GGUFEinsumDense` standing for `layer`, holding GGUF `data`.

        The new layer keeps `layer`'s name, dtype policy and variable paths, so
        it can replace it in a model; `layer`'s kernel is never read (it may be
        an uninitialized, deferred variable).

        Args:
            layer: a built bias-free `keras.layers.EinsumDense` or `Dense`.
            data: the GGUF tensor's data, shape `(N, row_bytes)` (`uint8`
                blocks, or the values of an F32/F16/BF16 tensor), as
                `kerasft.models.read_gguf` gives it.
            tensor_type: its GGUF type (name or `gguf.GGMLQuantizationType`).

        Returns:
            The built layer.
        """
        if getattr(layer, "bias", None) is not None:
            raise ValueError(
                "GGUF dense layers hold no bias (llama.cpp's Gemma has none). "
                f"Received: layer={layer.name!r} with a bias"
            )
        gguf_layer = cls(
            layer_equation(layer), layer_kernel_shape(layer), tensor_type,
            activation=getattr(layer, "activation", None),
            dtype=layer.dtype_policy, name=layer.name,
        )  # fmt: skip
        if layer.path and "/" in layer.path:
            place_under(gguf_layer, parent_path(layer.path))
        gguf_layer.build(build_input_shape(layer))
        gguf_layer.assign_gguf(data)
        return gguf_layer

    def assign_gguf(self, data: Any) -> None:
        """Stores GGUF data of shape `(N, row_bytes)` as they are (no rounding).

        Block types take the file's `uint8` bytes; F32/F16/BF16 take their
        values, or their file bytes.
        """
        data = np.asarray(data)
        if self.tensor_type in gguf_blocks.FLOAT_TYPES:
            data = float_values(data, self.tensor_type)
        expected = (self.output_size, self.row_bytes)
        if tuple(data.shape) != expected:
            raise ValueError(
                f"{self.tensor_type} data for {self.name!r} must have shape {expected}. "
                f"Received: data.shape={tuple(data.shape)}"
            )
        self.blocks.assign(data)

    def gguf_data(self) -> np.ndarray:
        """The tensor as a GGUF file holds it (`quantize_gguf_rows`'s form), numpy."""
        if self.tensor_type == "BF16":
            return quantize_gguf_rows(ops.convert_to_numpy(self.gguf_rows()), "BF16")
        return ops.convert_to_numpy(self.blocks)

    def gguf_rows(self, dtype: str = "float32") -> Any:
        """The dequantized GGUF tensor `(N, K)`: the transposed kernel matrix."""
        rows = gguf_blocks.dequantize_rows(self.blocks, self.tensor_type, self.contracted_size)
        return ops.cast(rows, dtype)

    # `QuantizedEinsumDense`'s `call`, `dequantized_kernel` and `to_float`
    # read the kernel matrix through this.
    def _dequantized_matrix(self, dtype="float32"):
        return ops.transpose(self.gguf_rows(dtype))

    def requantize(self, new_float_kernel: Any) -> None:
        """Rounds a float kernel into this layer's GGUF type, in place.

        What merging an adapter into this layer does (`kerasft.merge_adapters`):
        one rounding of base + update. For an exact merge, or a K-quant
        (which `gguf` cannot write), export the unmerged model with
        `kerasft.models.write_gemma3_gguf`.

        Raises:
            ValueError: if the layer's type is a K-quant.
        """
        kernel = ops.convert_to_numpy(ops.cast(new_float_kernel, "float32"))
        rows = self.kernel_matrix(kernel).T
        self.assign_gguf(quantize_gguf_rows(rows, self.tensor_type))

    def _not_this_scheme(self, *args, **kwargs):
        raise ValueError(
            f"A GGUF layer holds GGUF blocks, not integer codes and scales. Received: "
            f"a call on {self.name!r} of tensor_type={self.tensor_type!r}"
        )

    assign_quantized_matrix = _not_this_scheme
    quantized_matrix = _not_this_scheme
    _scale_matrix = _not_this_scheme

    def expected_quantized_bytes(self) -> int:
        """`quantized_bytes()` from the GGUF block sizes."""
        return gguf_blocks.tensor_bytes(self.tensor_type, (self.output_size, self.contracted_size))

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(
            {
                "equation": self.equation,
                "kernel_shape": list(self.kernel_shape),
                "tensor_type": self.tensor_type,
                "activation": keras.activations.serialize(self.activation),
            }
        )
        return config
