"""kerasft.einsum: parsing dense equations (quantizers) and fan-in/fan-out axes (adapters)."""

import keras
import numpy as np
import pytest

from kerasft.einsum import DENSE_EQUATION, kernel_axes, parse_equation

GEMMA_EQUATIONS = [
    # equation, output shape, input dim, fan_in, fan_out
    ("btd,ndh->btnh", (None, 2, 8), 16, 16, 16),
    ("bsd,kdh->bskh", (None, 1, 8), 16, 16, 8),
    ("btnh,nhd->btd", (None, 16), None, 16, 16),
    ("btd,df->btf", (None, 32), 16, 16, 32),
    ("btf,fd->btd", (None, 16), 32, 32, 16),
]


def build_einsum(equation, output_shape, input_dim):
    layer = keras.layers.EinsumDense(equation, output_shape=output_shape)
    input_shape = (2, 3, 2, 8) if input_dim is None else (2, 3, input_dim)
    layer.build(input_shape)
    return layer


@pytest.mark.parametrize("equation,output_shape,input_dim,fan_in,fan_out", GEMMA_EQUATIONS)
def test_fan_in_and_fan_out_of_every_gemma_equation(equation, output_shape, input_dim, fan_in, fan_out):
    axes = kernel_axes(build_einsum(equation, output_shape, input_dim))
    assert (axes.fan_in, axes.fan_out) == (fan_in, fan_out)
    assert axes.rank_letter not in equation


def test_dense_is_fan_in_by_fan_out():
    layer = keras.layers.Dense(5)
    layer.build((None, 7))
    axes = kernel_axes(layer)
    assert (axes.fan_in, axes.fan_out) == (7, 5)


def test_batched_kernel_axis_is_refused():
    layer = keras.layers.EinsumDense("bnd,ndh->bnh", output_shape=(2, 4))
    layer.build((3, 2, 6))
    with pytest.raises(ValueError, match="equation='bnd,ndh->bnh'"):
        kernel_axes(layer)


def test_non_dense_layer_is_refused():
    layer = keras.layers.Embedding(10, 4)
    with pytest.raises(ValueError, match="Embedding"):
        kernel_axes(layer)

PARSE_CASES = [
    # equation, kernel shape, contracted letters, K, N, input shape, output shape
    ("btd,ndh->btnh", (4, 16, 8), "d", 16, 32, (2, 3, 16), (2, 3, 4, 8)),
    ("bsd,kdh->bskh", (1, 16, 8), "d", 16, 8, (2, 3, 16), (2, 3, 1, 8)),
    ("btnh,nhd->btd", (4, 8, 16), "nh", 32, 16, (2, 3, 4, 8), (2, 3, 16)),
    ("btd,df->btf", (16, 32), "d", 16, 32, (2, 3, 16), (2, 3, 32)),
    ("btf,fd->btd", (32, 16), "f", 32, 16, (2, 3, 32), (2, 3, 16)),
    (DENSE_EQUATION, (16, 5), "i", 16, 5, (2, 3, 7, 16), (2, 3, 7, 5)),
]


@pytest.mark.parametrize("equation,kernel,letters,k,n,input_shape,output_shape", PARSE_CASES)
def test_contracted_axes_and_shapes(equation, kernel, letters, k, n, input_shape, output_shape):
    axes = parse_equation(equation)
    assert axes.contracted_letters == letters
    assert axes.contracted_size(kernel) == k and axes.output_size(kernel) == n
    assert axes.output_shape(input_shape, kernel) == output_shape


@pytest.mark.parametrize("equation,kernel,letters,k,n,input_shape,output_shape", PARSE_CASES)
def test_matrix_equation_and_input_rows_reproduce_the_einsum(
    equation, kernel, letters, k, n, input_shape, output_shape
):
    rng = np.random.default_rng(0)
    axes = parse_equation(equation)
    w = rng.normal(size=kernel)
    x = rng.normal(size=input_shape)
    matrix_kernel = np.transpose(w, axes.kernel_to_matrix_perm)
    np.testing.assert_allclose(
        np.einsum(axes.matrix_equation, x, matrix_kernel), np.einsum(equation, x, w), atol=1e-12
    )
    np.testing.assert_array_equal(
        np.transpose(matrix_kernel, axes.matrix_to_kernel_perm), w
    )
    rows = np.transpose(x, axes.input_to_rows_perm(x.ndim)).reshape(-1, k)
    expected = np.einsum(equation, x, w)
    got = rows @ matrix_kernel.reshape(k, n)
    np.testing.assert_allclose(got.reshape(-1), expected.reshape(-1), atol=1e-12)


@pytest.mark.parametrize(
    "equation", ["btd,ndh", "btd,bdh->btdh", "abc,cd->ad", "btd,dd->bt", "...d,df->f", 3]
)
def test_unsupported_equations_raise_with_the_equation(equation):
    with pytest.raises(ValueError, match="equation"):
        parse_equation(equation)
