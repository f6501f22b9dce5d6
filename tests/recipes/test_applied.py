"""kerasft.recipes.applied: the record of the recipes applied to a model."""

from kerasft.recipes import IA3, LoRA
from kerasft.recipes.applied import applied_recipe_config, applied_recipes, freeze_all
from kerasft.testing import tiny_causal_lm


def test_each_applied_recipe_is_recorded_with_its_own_layers():
    model = tiny_causal_lm("gemma")
    assert applied_recipes(model) == [] and applied_recipe_config(model) is None
    LoRA(rank=2, targets=["query"]).apply(model)
    IA3(targets=["ffw_linear"], feedforward_targets=["ffw_linear"]).apply(model)
    entries = applied_recipes(model)
    assert [entry.config["method"] for entry in entries] == ["lora", "ia3"]
    assert all(path.endswith("/query") for path in entries[0].target_paths)
    assert all(path.endswith("/ffw_linear") for path in entries[1].target_paths)
    assert applied_recipe_config(model)["method"] == "ia3"


def test_freeze_all_freezes_variables_but_leaves_layers_trainable():
    model = tiny_causal_lm("gemma")
    freeze_all(model)
    assert model.trainable and not model.trainable_variables
