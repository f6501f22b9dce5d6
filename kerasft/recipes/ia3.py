"""(IA)^3: learned rescaling vectors on key/value outputs and feed-forward activations."""

from kerasft.layers.ia3 import IA3Dense
from kerasft.recipes.base import register_recipe
from kerasft.recipes.wrapper_recipe import WrapperRecipe
from kerasft.targeting import normalize_targets, path_matches


@register_recipe("ia3")
class IA3(WrapperRecipe):
    """Rescales chosen activations by learned vectors initialised to ones.

    Targets matched by `feedforward_targets` have their *input* scaled (for
    Gemma's `ffw_linear`: the gated feed-forward activations); every other
    target has its *output* features scaled (key and value projections). All
    vectors merge into the kernels with `IA3().merge(model)` (or
    `kerasft.merge_adapters`).

    Args:
        targets: layer names, path globs or shortcuts (see
            `kerasft.targeting`) to wrap with `IA3Dense`.
        feedforward_targets: which of those are scaled on the input side.
    """

    def __init__(self, targets=("key", "value", "ffw_linear"), feedforward_targets=("ffw_linear",)):
        self.targets = normalize_targets(targets)
        if isinstance(feedforward_targets, str):
            feedforward_targets = (feedforward_targets,)
        feedforward_targets = tuple(feedforward_targets)
        if not all(isinstance(t, str) and t for t in feedforward_targets):
            raise ValueError(
                "`feedforward_targets` must be a list of layer names, path globs or "
                f"shortcuts. Received: feedforward_targets={feedforward_targets!r}"
            )
        self.feedforward_targets = feedforward_targets

    def side_for(self, path):
        """`"input"` for a feed-forward target, else `"output"`."""
        if any(path_matches(path, t) for t in self.feedforward_targets):
            return "input"
        return "output"

    def make_wrapper(self, path, layer):
        return IA3Dense(layer, side=self.side_for(path), target_path=path)

    def get_config(self):
        return {
            "method": self.method,
            "targets": list(self.targets),
            "feedforward_targets": list(self.feedforward_targets),
        }
