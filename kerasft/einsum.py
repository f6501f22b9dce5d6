"""Einsum equations of dense layers: the one place that knows their axes.

A dense-like layer (`keras.layers.Dense`, `keras.layers.EinsumDense`, or a
kerasft layer with an `equation` attribute) computes `einsum(equation, x, W)`
with `equation = "input,kernel->output"`. Its kernel letters split into
*contracted* ones (in the input and the kernel, not the output: the fan-in)
and the rest (the fan-out). Everything that reasons about a kernel asks this
module:

- quantizers store the kernel as a 2-D matrix `(K, N)`: `K` flattens the
  contracted axes, in kernel order, and `N` the others, in kernel order;
  groups run along `K`, so for Gemma's `attention_output` (`btnh,nhd->btd`) a
  group of 64 covers 64 consecutive `(n, h)` positions (`parse_equation`);
- a low-rank update factors the kernel as (fan-in axes) x (fan-out axes), not
  as (all-but-last axes) x (last axis) the way Keras's built-in LoRA does: for
  the Gemma query kernel `ndh` (heads, model dim, head dim) the input
  contracts over `d` only, so the true update is `d -> rank -> (n, h)`
  (`kernel_axes`).
"""

import dataclasses
import math
import string

import keras

DENSE_EQUATION = "...i,io->...o"


@dataclasses.dataclass(frozen=True)
class EquationAxes:
    """Parsed `"input,kernel->output"` equation with the kernel's axis roles.

    Attributes:
        equation: the equation without spaces.
        input_letters, kernel_letters, output_letters: the three terms
            without a leading `...`.
        input_ellipsis: whether the input and output start with `...`.
        contracted_letters: kernel letters summed over, in kernel order.
        output_kernel_letters: the other kernel letters, in kernel order.
    """

    equation: str
    input_letters: str
    kernel_letters: str
    output_letters: str
    input_ellipsis: bool
    contracted_letters: str
    output_kernel_letters: str

    def sizes(self, kernel_shape):
        """Maps each kernel letter to its size."""
        return dict(zip(self.kernel_letters, kernel_shape))

    def contracted_size(self, kernel_shape):
        """`K`: the product of the contracted kernel axes."""
        sizes = self.sizes(kernel_shape)
        return math.prod(sizes[c] for c in self.contracted_letters)

    def output_size(self, kernel_shape):
        """`N`: the product of the other kernel axes."""
        sizes = self.sizes(kernel_shape)
        return math.prod(sizes[c] for c in self.output_kernel_letters)

    @property
    def matrix_kernel_letters(self):
        """Kernel letters in matrix order: contracted first, then the others."""
        return self.contracted_letters + self.output_kernel_letters

    def matrix_kernel_shape(self, kernel_shape):
        sizes = self.sizes(kernel_shape)
        return tuple(sizes[c] for c in self.matrix_kernel_letters)

    @property
    def kernel_to_matrix_perm(self):
        """Transpose taking the kernel to matrix axis order."""
        return tuple(self.kernel_letters.index(c) for c in self.matrix_kernel_letters)

    @property
    def matrix_to_kernel_perm(self):
        """Transpose taking matrix axis order back to the kernel's."""
        return tuple(self.matrix_kernel_letters.index(c) for c in self.kernel_letters)

    @property
    def matrix_equation(self):
        """The layer equation with the kernel in matrix axis order."""
        ellipsis = "..." if self.input_ellipsis else ""
        return (
            f"{ellipsis}{self.input_letters},{self.matrix_kernel_letters}"
            f"->{ellipsis}{self.output_letters}"
        )

    def output_shape(self, input_shape, kernel_shape):
        """The output shape for an input shape (None for unknown sizes)."""
        input_shape = tuple(input_shape)
        num_leading = len(input_shape) - len(self.input_letters)
        sizes = dict(zip(self.input_letters, input_shape[num_leading:]))
        sizes.update(self.sizes(kernel_shape))
        leading = input_shape[:num_leading] if self.input_ellipsis else ()
        return tuple(leading) + tuple(sizes[c] for c in self.output_letters)

    def input_to_rows_perm(self, input_ndim):
        """Transpose taking an input to (batch axes..., contracted axes in kernel order).

        Reshaping the result to `(-1, K)` gives the rows `x` such that the
        layer computes `x @ W` with `W` the `(K, N)` kernel matrix.
        """
        num_leading = input_ndim - len(self.input_letters)
        batch = list(range(num_leading)) + [
            num_leading + i
            for i, c in enumerate(self.input_letters)
            if c not in self.contracted_letters
        ]
        contracted = [
            num_leading + self.input_letters.index(c) for c in self.contracted_letters
        ]
        return tuple(batch + contracted)


def parse_equation(equation):
    """Parses a dense layer's einsum equation.

    Args:
        equation: `"input,kernel->output"`, e.g. `"btd,ndh->btnh"`; the input
            and output may start with `...` (as in `DENSE_EQUATION`).

    Returns:
        An `EquationAxes`.

    Raises:
        ValueError: if the equation is malformed, contracts nothing, or has a
            kernel letter that is in both the input and the output (a batched
            kernel axis, which a per-output-channel scheme does not cover).
    """
    if not isinstance(equation, str):
        raise ValueError(f"`equation` must be a string. Received: equation={equation!r}")
    clean = equation.replace(" ", "")
    try:
        operands, output = clean.split("->")
        inputs, kernel = operands.split(",")
    except ValueError:
        raise ValueError(
            "`equation` must look like 'input,kernel->output'. "
            f"Received: equation={equation!r}"
        ) from None
    input_ellipsis = inputs.startswith("...")
    if input_ellipsis != output.startswith("...") or "..." in kernel:
        raise ValueError(
            "`equation` may use '...' only at the start of both the input and the "
            f"output. Received: equation={equation!r}"
        )
    inputs, output = inputs.removeprefix("..."), output.removeprefix("...")
    for term in (inputs, kernel, output):
        if not term.isalpha() or len(set(term)) != len(term):
            raise ValueError(
                "`equation` terms must be distinct letters. "
                f"Received: equation={equation!r}"
            )
    contracted = "".join(c for c in kernel if c in inputs and c not in output)
    others = "".join(c for c in kernel if c not in contracted)
    batched = [c for c in kernel if c in inputs and c in output]
    dangling = (
        [c for c in output if c not in inputs and c not in kernel]
        + [c for c in inputs if c not in kernel and c not in output]
        + [c for c in kernel if c not in inputs and c not in output]
    )
    if not contracted or batched or dangling:
        raise ValueError(
            "`equation` must contract at least one kernel axis with the input, every "
            "kernel axis must be either contracted or an output axis, and every "
            "input axis must be contracted or kept. "
            f"Received: equation={equation!r}"
        )
    return EquationAxes(
        equation=clean,
        input_letters=inputs,
        kernel_letters=kernel,
        output_letters=output,
        input_ellipsis=input_ellipsis,
        contracted_letters=contracted,
        output_kernel_letters=others,
    )


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
    """The einsum equation of a `Dense`, `EinsumDense`, or a layer with an `equation`
    (kerasft's quantized and fake-quantized layers)."""
    if isinstance(layer, keras.layers.EinsumDense):
        return layer.equation
    if isinstance(layer, keras.layers.Dense):
        return DENSE_EQUATION
    equation = getattr(layer, "equation", None)
    if equation is None:
        raise ValueError(
            "Only `keras.layers.Dense`, `keras.layers.EinsumDense` and layers "
            "with an `equation` attribute have an einsum equation. Received: "
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
    try:
        axes = parse_equation(equation)
    except ValueError:
        axes = None
    if axes is None or not axes.output_kernel_letters:
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
        fan_in_letters=axes.contracted_letters,
        fan_out_letters=axes.output_kernel_letters,
        rank_letter=rank_letter,
    )
