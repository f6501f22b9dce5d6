"""The roles of the letters in a dense layer's einsum equation.

A quantized kernel is stored as a 2-D matrix `(K, N)`: `K` flattens the
*contracted* kernel axes (letters in both the input and the kernel but not the
output), in kernel order, and `N` flattens the remaining kernel axes, in
kernel order. Groups run along `K`, so for Gemma's `attention_output`
(`btnh,nhd->btd`) a group of 64 covers 64 consecutive `(n, h)` positions.
"""

import dataclasses
import math

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
