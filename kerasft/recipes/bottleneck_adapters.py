"""Houlsby-style bottleneck adapters after the attention and/or feed-forward outputs."""

from kerasft.layers.bottleneck import BottleneckAdapter, validate_bottleneck_arguments
from kerasft.recipes.base import Recipe, freeze_all, mark_applied, register_recipe
from kerasft.targeting import find_target_layers, wrap_layers

PLACEMENTS = {
    "attention": ("attention_output",),
    "ffw": ("ffw_linear",),
    "both": ("attention_output", "ffw_linear"),
}


@register_recipe("adapters")
class Adapters(Recipe):
    """Bottleneck adapters `y + up(activation(down(y)))`; everything else frozen.

    Each adapter wraps the layer whose output `y` it adapts: the attention
    output projection (`attention_output`) and/or the feed-forward output
    (`ffw_linear`) of every decoder block. `up` starts at zero, so the model
    is unchanged at first. Adapters are not mergeable: `merge_adapters`
    raises a `ValueError` on a model that has them.

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

    def apply(self, model):
        find_target_layers(model, self.targets)  # fail before changing anything
        freeze_all(model)
        wrap_layers(
            model,
            self.targets,
            lambda path, layer: BottleneckAdapter(
                layer,
                bottleneck=self.bottleneck,
                activation=self.activation,
                target_path=path,
            ),
        )
        mark_applied(model, self)
        return model

    def get_config(self):
        return {
            "method": self.method,
            "bottleneck": self.bottleneck,
            "placement": self.placement,
            "activation": self.activation,
        }
