"""Float layers and quantized ones: what a float dense layer holds, and the way back.

`float_layer_spec` reads the equation, kernel, bias and activation of a float
`Dense` / `EinsumDense` (what `QuantizedEinsumDense.from_float` quantizes);
`float_layer` builds the float layer a quantized one stands for (what
`QuantizedEinsumDense.to_float` returns, e.g. for an exact merge of an adapter).
"""

from typing import Any

import keras
from keras import ops

from kerasft.einsum import layer_equation
from kerasft.targeting import kernel_variable, parent_path, place_under


def float_layer_spec(layer: keras.Layer) -> dict[str, Any]:
    """The equation, kernel, bias and activation of a float dense-like layer.

    Args:
        layer: a built `keras.layers.EinsumDense` or `keras.layers.Dense`.

    Returns:
        A dict with `equation`, `kernel` (numpy), `bias` (numpy or None) and
        `activation`.

    Raises:
        ValueError: for another layer type, an unbuilt layer, or a layer that
            Keras has already quantized.
    """
    if not isinstance(layer, (keras.layers.EinsumDense, keras.layers.Dense)):
        raise ValueError(
            "Only `keras.layers.EinsumDense` and `keras.layers.Dense` layers can be "
            f"quantized. Received: layer={getattr(layer, 'name', layer)!r} of type "
            f"{type(layer).__name__}"
        )
    if not layer.built:
        raise ValueError(
            f"The layer must be built before it is quantized. Received: layer={layer.name!r}"
        )
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(
            "The layer is already quantized by Keras. Received: "
            f"layer={layer.name!r} with quantization_mode={layer.quantization_mode!r}"
        )
    equation = layer_equation(layer)
    bias = getattr(layer, "bias", None)
    return {
        "equation": equation,
        "kernel": ops.convert_to_numpy(ops.cast(layer.kernel, "float32")),
        "bias": None if bias is None else ops.convert_to_numpy(bias),
        "activation": layer.activation,
    }


def float_layer(layer: Any, kernel: Any) -> keras.Layer:
    """The float `EinsumDense` / `Dense` a quantized `layer` stands for, holding `kernel`.

    It has the quantized layer's equation, bias, activation, name, dtype
    policy and variable paths (see `QuantizedEinsumDense.to_float`).
    """
    axes = layer.axes
    sizes = axes.sizes(layer.kernel_shape)
    if axes.input_ellipsis:  # `...i,io->...o`: a Dense layer
        result = keras.layers.Dense(
            layer.output_size, activation=layer.activation, use_bias=layer.bias is not None,
            dtype=layer.dtype_policy, name=layer.name,
        )
        input_shape = (None, layer.contracted_size)
    else:
        output_shape = [sizes.get(c) for c in axes.output_letters[1:]]
        bias_axes = None
        if layer.bias_shape is not None:
            kernel_outputs = [c for c in axes.output_letters if c in sizes]
            bias_axes = "".join(kernel_outputs[-len(layer.bias_shape):])
        result = keras.layers.EinsumDense(
            layer.equation, output_shape=output_shape, activation=layer.activation,
            bias_axes=bias_axes, dtype=layer.dtype_policy, name=layer.name,
        )
        input_shape = tuple(sizes.get(c) for c in axes.input_letters)
    if layer.path and "/" in layer.path:
        place_under(result, parent_path(layer.path))
    result.build(input_shape)
    variable = kernel_variable(result)
    variable.assign(ops.cast(kernel, variable.dtype))
    if layer.bias is not None:
        result.bias.assign(layer.bias)
    return result
