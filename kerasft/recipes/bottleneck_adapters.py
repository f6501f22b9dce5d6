"""Houlsby-style bottleneck adapters after the attention and/or feed-forward outputs."""

from kerasft.layers.bottleneck import BottleneckAdapter, validate_bottleneck_arguments
from kerasft.recipes.base import register_recipe
from kerasft.recipes.wrapper_recipe import WrapperRecipe

PLACEMENTS = {
    "attention": ("attention_output",),
    "ffw": ("ffw_linear",),
    "both": ("attention_output", "ffw_linear"),
}


@register_recipe("adapters")
class Adapters(WrapperRecipe):
    """Bottleneck adapters `y + up(activation(down(y)))`; everything else frozen.

    Each adapter wraps the layer whose output `y` it adapts: the attention
    output projection (`attention_output`) and/or the feed-forward output
    (`ffw_linear`) of every decoder block. `up` starts at zero, so the model
    is unchanged at first. Adapters are not mergeable: `merge` (and
    `kerasft.merge_adapters`) raises a `ValueError` on a model that has them.

    Args:
        bottleneck: hidden units of each adapter.
        placement: `"ffw"`, `"attention"` or `"both"`.
        activation: the name of a Keras activation.
    """

    def __init__(self, bottleneck=64, placement="ffw", activation="gelu"):
        validate_bottleneck_arguments(bottleneck, activation)
        if placement not in PLACEMENTS:
            raise ValueError(
                f"`placement` must be one of {sorted(PLACEMENTS)}. Received: "
                f"placement={placement!r}"
            )
        self.bottleneck = bottleneck
        self.placement = placement
        self.activation = activation

    @property
    def targets(self):
        """The layer names the adapters wrap."""
        return PLACEMENTS[self.placement]

    def make_wrapper(self, path, layer):
        return BottleneckAdapter(
            layer, bottleneck=self.bottleneck, activation=self.activation, target_path=path
        )

    def get_config(self):
        return {
            "method": self.method,
            "bottleneck": self.bottleneck,
            "placement": self.placement,
            "activation": self.activation,
        }
