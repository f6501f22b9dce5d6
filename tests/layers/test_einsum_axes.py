import keras
import pytest

from kerasft.layers.einsum_axes import kernel_axes

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
