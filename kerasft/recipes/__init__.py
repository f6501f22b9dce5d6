"""Fine-tuning recipes: each applies itself to a model and compiles it for `fit()`."""

from kerasft.recipes.base import Recipe, recipe_from_config, recipe_from_file
from kerasft.recipes.classifier import Classifier
from kerasft.recipes.freeze import Freeze
from kerasft.recipes.full_fine_tune import FullFineTune
from kerasft.recipes.lora import LoRA
from kerasft.recipes.prefix_tuning import PrefixTuning
from kerasft.recipes.prompt_tuning import PromptTuning, PTuning
from kerasft.recipes.ia3 import IA3
from kerasft.recipes.bottleneck_adapters import Adapters
from kerasft.recipes.qat import QAT
from kerasft.recipes.qlora import QLoRA

__all__ = [
    "PrefixTuning",
    "PromptTuning",
    "PTuning",
    "Classifier",
    "Recipe",
    "FullFineTune",
    "Freeze",
    "LoRA",
    "IA3",
    "Adapters",
    "QAT",
    "QLoRA",
    "recipe_from_config",
    "recipe_from_file",
]

# Preference and reinforcement learning.
from kerasft.recipes.preference import DPO, SimPO  # noqa: E402
from kerasft.recipes.reward_model import RewardModel  # noqa: E402
from kerasft.recipes.grpo import GRPO  # noqa: E402

__all__ += ["DPO", "SimPO", "RewardModel", "GRPO"]
