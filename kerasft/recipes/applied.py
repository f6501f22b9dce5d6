"""What was done to a model: the stack of applied recipes and what was merged.

Each entry records a recipe's config, the adapter layers it added and the
weights it trained, so that adapter files save every recipe still active and
know what was merged into the base (`kerasft.adapters`).
"""

import weakref
from typing import TYPE_CHECKING

import keras

from kerasft.model_saving import track_applied
from kerasft.targeting import adapter_wrappers

if TYPE_CHECKING:
    from kerasft.recipes.base import Recipe


def freeze_all(model):
    """Makes every variable of `model` non-trainable, leaving layers' flags on.

    Layers stay `trainable=True` so that adapters added under them later are
    still collected into `model.trainable_variables`.
    """
    model.trainable = True
    for variable in model.variables:
        variable.trainable = False


class AppliedRecipe:
    """One recipe applied to a model: its config, the wrappers it put in, what it trained.

    Attributes:
        config: the recipe's `get_config()` when it was applied.
        target_paths: the paths of the layers it wrapped, in model order.
        trained_paths: the paths of the variables trainable right after it
            was applied (a later recipe may freeze them; they are still its
            result and are saved with it).
    """

    def __init__(self, recipe, config, wrappers, trained_paths):
        self.recipe = recipe
        self.config = config
        self.target_paths = [wrapper.target_path for wrapper in wrappers]
        self.trained_paths = list(trained_paths)
        # Weak: a merged wrapper is dropped by the model and need not be kept.
        self._wrappers = [weakref.ref(wrapper) for wrapper in wrappers]

    def wrappers(self) -> list:
        """The wrappers this recipe put in that still exist (merged ones may not)."""
        return [w for w in (ref() for ref in self._wrappers) if w is not None]

    def describe(self) -> dict:
        """`{"recipe": config, "target_paths": [...]}`, as adapter files store it."""
        return {"recipe": self.config, "target_paths": list(self.target_paths)}

    def __repr__(self):
        return f"{self.config.get('method')} at paths {self.target_paths}"


def mark_applied(
    model: keras.Model,
    recipe: "Recipe",
    applied_on: keras.Model | None = None,
    replacing: list | None = None,
) -> None:
    """Records `recipe` on `model`, on top of the recipes applied before it.

    The record (see `applied_recipes`) is what `save_adapter` writes and
    `load_adapter` re-applies in order. The new entry claims every adapter
    wrapper in `model` that no earlier entry claims.

    Args:
        model: the model `recipe.apply` returns.
        recipe: the recipe just applied.
        applied_on: for a recipe that builds a new model around the one it
            was given (`Classifier`), that given model: its record carries
            over, less the entries of recipes `recipe` holds (its `base`,
            which it re-applies itself).
        replacing: wrappers claimed by an earlier entry that `recipe` now
            describes instead (folding a prefix provider into the layers);
            that entry is replaced in place.
    """
    from kerasft.recipes.base import Recipe

    source = model if applied_on is None else applied_on
    entries = list(applied_recipes(source))
    if applied_on is not None:
        held = [value for value in vars(recipe).values() if isinstance(value, Recipe)]
        entries = [entry for entry in entries if not any(entry.recipe is r for r in held)]
    claimed = {id(wrapper) for entry in entries for wrapper in entry.wrappers()}
    new = [wrapper for wrapper in adapter_wrappers(model) if id(wrapper) not in claimed]
    trained = [variable.path for variable in model.trainable_variables]
    replaced = {id(wrapper) for wrapper in replacing or ()}
    index = next(
        (i for i, entry in enumerate(entries)
         if any(id(wrapper) in replaced for wrapper in entry.wrappers())),
        None,
    )
    if index is None:
        entries.append(AppliedRecipe(recipe, recipe.get_config(), new, trained))
    else:
        wrappers = entries[index].wrappers() + new
        entries[index] = AppliedRecipe(recipe, recipe.get_config(), wrappers, trained)
        new = wrappers
    for wrapper in new:
        wrapper.applied_by = recipe.method
    # object.__setattr__ keeps this plain list out of Keras's state tracking.
    object.__setattr__(model, "_kerasft_recipes", entries)
    # `model.save()` then writes this record and `keras.saving.load_model` re-applies it.
    track_applied(model, applied_on)


def applied_recipes(model: keras.Model) -> list[AppliedRecipe]:
    """The `AppliedRecipe` entries of `model`, oldest first (merged ones included)."""
    return list(getattr(model, "_kerasft_recipes", ()))


def restore_applied_recipes(model: keras.Model, entries: list[AppliedRecipe]) -> None:
    """Sets `model`'s record back to `entries` (from `applied_recipes`), e.g. after a failed load."""
    object.__setattr__(model, "_kerasft_recipes", list(entries))


def split_merged_recipes(model: keras.Model) -> tuple[list[AppliedRecipe], list[AppliedRecipe]]:
    """`(merged, live)`: the applied recipes now part of the base, and those after them.

    A recipe is merged when some wrapper it put in is gone from the model
    (`Recipe.merge`, `kerasft.merge_adapters` fold wrappers into the base). Everything applied up to the last merged recipe is then part of
    the base; what follows is live and is what `save_adapter` saves.
    """
    entries = applied_recipes(model)
    present = {id(wrapper) for wrapper in adapter_wrappers(model)}
    last = -1
    for index, entry in enumerate(entries):
        alive = [w for w in entry.wrappers() if id(w) in present]
        if len(alive) < len(entry.target_paths):
            last = index
    return entries[: last + 1], entries[last + 1 :]


def unmerged_among_merged(model: keras.Model, merged: list[AppliedRecipe]) -> list[AppliedRecipe]:
    """The entries of `merged` (see `split_merged_recipes`) some of whose wrappers are still in.

    Non-empty when adapters were merged while others applied before them were
    not: no adapter file or saved config describes such a model.
    """
    present = {id(wrapper) for wrapper in adapter_wrappers(model)}
    return [entry for entry in merged if any(id(w) in present for w in entry.wrappers())]


def applied_recipe_config(model):
    """The config of the last recipe applied to `model`, or None."""
    entries = applied_recipes(model)
    return entries[-1].config if entries else None
