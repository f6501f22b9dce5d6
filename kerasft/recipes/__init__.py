"""Fine-tuning recipes: each applies itself to a model and compiles it for `fit()`."""

from kerasft.recipes.base import Recipe, recipe_from_config, recipe_from_file
from kerasft.recipes.freeze import Freeze
from kerasft.recipes.full_fine_tune import FullFineTune
from kerasft.recipes.lora import LoRA

__all__ = [
    "Recipe",
    "FullFineTune",
    "Freeze",
    "LoRA",
    "recipe_from_config",
    "recipe_from_file",
]
