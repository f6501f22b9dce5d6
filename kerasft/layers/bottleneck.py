"""Houlsby-style bottleneck adapters added after a frozen dense layer's output."""

import math

import keras
from keras import ops

from kerasft.einsum import kernel_axes
from kerasft.layers.lora import adapter_dtype_policy
from kerasft.layers.wrapper import AdapterWrapper


def validate_bottleneck_arguments(bottleneck: int, activation: str) -> None:
    """Raises a `ValueError` naming the first bad bottleneck-adapter argument."""
    if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck <= 0:
        raise ValueError(
            f"`bottleneck` must be a positive integer. Received: bottleneck={bottleneck!r}"
        )
    if not isinstance(activation, str):
        raise ValueError(
            "`activation` must be the name of a Keras activation. Received: "
            f"activation={activation!r}"
        )
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(
            "`activation` must be the name of a Keras activation. Received: "
            f"activation={activation!r}"
        ) from None


@keras.saving.register_keras_serializable(package="kerasft")
class BottleneckAdapter(AdapterWrapper):
    """`y + up(activation(down(y)))` after a frozen dense layer's output `y`.

    Houlsby et al., "Parameter-Efficient Transfer Learning for NLP" (2019).
    `down` maps the layer's output features (its kernel's fan-out axes, e.g.
    Gemma's hidden size after `attention_output` or `ffw_linear`) to
    `bottleneck` units, with a bias; `up` maps back, with a bias. `up` starts
    at zero, so the wrapped model's output is unchanged at first.

    The adapter is a non-linear function of the output, so it cannot be
    folded into the wrapped kernel: `mergeable` is False and
    `kerasft.merge_adapters` raises a `ValueError` for a model that has one.

    Args:
        layer: a built `keras.layers.Dense` or `keras.layers.EinsumDense` (or a
            kerasft quantized dense layer).
        bottleneck: the number of hidden units, a positive integer.
        activation: the name of a Keras activation (`"gelu"`, `"relu"`, ...).
        target_path: the path of the wrapped layer in its model.
        **kwargs: base `Layer` arguments (`name`, ...).
    """

    mergeable = False

    def __init__(self, layer, bottleneck=64, activation="gelu", target_path=None, **kwargs):
        validate_bottleneck_arguments(bottleneck, activation)
        kwargs.setdefault("name", f"{layer.name}_adapter")
        kwargs.setdefault("dtype", adapter_dtype_policy(layer.compute_dtype))
        super().__init__(layer, target_path=target_path, **kwargs)
        self.bottleneck = bottleneck
        self.activation = activation
        self.activation_fn = keras.activations.get(activation)
        self.axes = kernel_axes(layer)
        axes = self.axes
        if not axes.output_letters.endswith(axes.fan_out_letters):
            # The biases broadcast over the trailing output axes.
            raise ValueError(
                "A bottleneck adapter needs a layer whose output ends with its "
                f"kernel's output axes. Received: layer={layer.name!r} with "
                f"equation={axes.equation!r}"
            )
        kept = "".join(c for c in axes.output_letters if c not in axes.fan_out_letters)
        r = axes.rank_letter
        self.down_equation = f"{axes.output_letters},{axes.fan_out_letters}{r}->{kept}{r}"
        self.up_equation = f"{kept}{r},{r}{axes.fan_out_letters}->{axes.output_letters}"

    def build(self, input_shape=None):
        features = self.axes.shape_of(self.axes.fan_out_letters)
        limit = 1.0 / math.sqrt(self.axes.fan_out)
        self.down_kernel = self.add_weight(
            name="down_kernel",
            shape=features + (self.bottleneck,),
            initializer=keras.initializers.RandomUniform(-limit, limit),
        )
        self.down_bias = self.add_weight(
            name="down_bias", shape=(self.bottleneck,), initializer="zeros"
        )
        self.up_kernel = self.add_weight(
            name="up_kernel", shape=(self.bottleneck,) + features, initializer="zeros"
        )
        self.up_bias = self.add_weight(name="up_bias", shape=features, initializer="zeros")
        self.built = True

    def call(self, inputs):
        outputs = self.layer(inputs)
        hidden = ops.einsum(self.down_equation, outputs, self.down_kernel) + self.down_bias
        hidden = self.activation_fn(hidden)
        update = ops.einsum(self.up_equation, hidden, self.up_kernel) + self.up_bias
        return outputs + ops.cast(update, outputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"bottleneck": self.bottleneck, "activation": self.activation})
        return config
