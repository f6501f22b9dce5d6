"""Which kernel axes a dense layer contracts with its input, and which it emits.

A low-rank update of a kernel must factor it as (fan-in axes) x (fan-out axes),
not as (all-but-last axes) x (last axis) the way Keras's built-in LoRA does:
for the Gemma query kernel `ndh` (heads, model dim, head dim) the input
contracts over `d` only, so the true update is `d -> rank -> (n, h)`.
"""

import dataclasses
import math
import string

import keras

DENSE_EQUATION = "...i,io->...o"


@dataclasses.dataclass(frozen=True)
class KernelAxes:
    """The roles of the letters of a dense layer's einsum equation.

    Attributes:
        equation: the layer's equation, `"input,kernel->output"`.
        kernel_shape: the kernel's shape.
        fan_in_letters: kernel letters contracted with the input, in kernel order.
        fan_out_letters: kernel letters that appear in the output, in kernel order.
        rank_letter: a letter unused by the equation, for the LoRA rank axis.
    """

    equation: str
    kernel_shape: tuple
    fan_in_letters: str
    fan_out_letters: str
    rank_letter: str

    @property
    def input_letters(self):
        return self.equation.split(",")[0]

    @property
    def kernel_letters(self):
        return self.equation.split(",")[1].split("->")[0]

    @property
    def output_letters(self):
        return self.equation.split("->")[1]

    def size(self, letters):
        dims = dict(zip(self.kernel_letters, self.kernel_shape))
        return math.prod(dims[letter] for letter in letters)

    @property
    def fan_in(self):
        return self.size(self.fan_in_letters)

    @property
    def fan_out(self):
        return self.size(self.fan_out_letters)

    def shape_of(self, letters):
        dims = dict(zip(self.kernel_letters, self.kernel_shape))
        return tuple(dims[letter] for letter in letters)

    @property
    def down_equation(self):
        """`inputs, A -> hidden` where A has axes (fan-in..., rank)."""
        kept = "".join(c for c in self.input_letters if c not in self.fan_in_letters)
        r = self.rank_letter
        return f"{self.input_letters},{self.fan_in_letters}{r}->{kept}{r}"

    @property
    def up_equation(self):
        """`hidden, B -> outputs` where B has axes (rank, fan-out...)."""
        kept = "".join(c for c in self.input_letters if c not in self.fan_in_letters)
        r = self.rank_letter
        return f"{kept}{r},{r}{self.fan_out_letters}->{self.output_letters}"

    @property
    def delta_equation(self):
        """`A, B -> kernel-shaped update`."""
        r = self.rank_letter
        return (
            f"{self.fan_in_letters}{r},{r}{self.fan_out_letters}"
            f"->{self.kernel_letters}"
        )


def layer_equation(layer):
    """The einsum equation of a `Dense`, `EinsumDense` or kerasft quantized layer."""
    if isinstance(layer, keras.layers.EinsumDense):
        return layer.equation
    if isinstance(layer, keras.layers.Dense):
        return DENSE_EQUATION
    equation = getattr(layer, "equation", None)
    if equation is None:
        raise ValueError(
            "Only `keras.layers.Dense`, `keras.layers.EinsumDense` and layers "
            "with an `equation` attribute can carry an adapter. Received: "
            f"layer={layer.name!r} of type {type(layer).__name__}"
        )
    return equation


def layer_kernel_shape(layer):
    """The float kernel shape of a dense-like layer."""
    if hasattr(layer, "kernel_shape"):
        return tuple(layer.kernel_shape)
    return tuple(layer.kernel.shape)


def kernel_axes(layer):
    """Splits a dense-like layer's kernel axes into fan-in and fan-out.

    Raises:
        ValueError: if a kernel axis is neither purely contracted nor purely
            emitted (e.g. a per-head batch axis), which a low-rank update
            cannot factor.
    """
    equation = layer_equation(layer).replace(" ", "")
    inputs, rest = equation.split(",")
    kernel, outputs = rest.split("->")
    fan_in = "".join(c for c in kernel if c in inputs and c not in outputs)
    fan_out = "".join(c for c in kernel if c in outputs and c not in inputs)
    if len(fan_in) + len(fan_out) != len(kernel) or not fan_in or not fan_out:
        raise ValueError(
            "Cannot factor this layer's kernel into input and output axes for a "
            f"low-rank adapter. Received: layer={layer.name!r} with "
            f"equation={equation!r}"
        )
    used = set(equation)
    rank_letter = next(c for c in string.ascii_lowercase[::-1] if c not in used)
    return KernelAxes(
        equation=equation,
        kernel_shape=layer_kernel_shape(layer),
        fan_in_letters=fan_in,
        fan_out_letters=fan_out,
        rank_letter=rank_letter,
    )
