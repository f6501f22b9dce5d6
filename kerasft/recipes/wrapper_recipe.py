"""`WrapperRecipe`: a method that freezes the model and wraps each target layer once."""

import keras

from kerasft.layers.wrapper import AdapterWrapper
from kerasft.recipes.base import Recipe, freeze_all, mark_applied
from kerasft.targeting import find_target_layers, wrap_layers


class WrapperRecipe(Recipe):
    """The `apply` of every wrapper method (LoRA, DoRA, QLoRA, IA3, bottleneck adapters, QAT).

    `apply` checks the targets (all of them, before the model changes),
    runs the subclass's checks and preparation, freezes the model, wraps
    each target with `make_wrapper(path, layer)` and records the recipe
    (`mark_applied`) for `save_adapter` / `load_adapter`. A new method
    defines `targets`, `make_wrapper` and `get_config`, and is registered
    with `kerasft.recipes.base.register_recipe`.
    """

    # Names, path globs or shortcuts (see `kerasft.targeting`); set by subclasses.
    targets: tuple[str, ...] = ()

    def make_wrapper(self, path: str, layer: keras.Layer) -> AdapterWrapper:
        """The adapter wrapper for the target `layer` at `path`."""
        raise NotImplementedError

    def check_targets(self, targets: dict[str, keras.Layer]) -> None:
        """Raises for a target this recipe cannot wrap (called before the model changes).

        Args:
            targets: `{path: layer}` of every target, from `find_target_layers`.
        """

    def prepare(self, model: keras.Model, targets: dict[str, keras.Layer]) -> None:
        """Changes `model` before it is frozen and wrapped (QLoRA quantizes it)."""

    def apply(self, model: keras.Model) -> keras.Model:
        """Freezes `model`, wraps every target with `make_wrapper`, records the recipe.

        Returns:
            `model`, changed in place.

        Raises:
            ValueError: if a target matches nothing, is already wrapped, or
                fails `check_targets`; the model is unchanged then.
        """
        targets = find_target_layers(model, self.targets)  # fail before changing anything
        self.check_targets(targets)
        self.prepare(model, targets)
        freeze_all(model)
        wrap_layers(model, self.targets, self.make_wrapper)
        mark_applied(model, self)
        return model
