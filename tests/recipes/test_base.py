import json
import pathlib

import pytest

from kerasft import testing
from kerasft.recipes import Freeze, LoRA, recipe_from_config, recipe_from_file
from kerasft.recipes.base import read_config_file


def test_config_round_trip_for_every_recipe():
    for recipe in (LoRA(rank=4, alpha=8, targets=["mlp"], use_rslora=True), Freeze([-1, "x"])):
        rebuilt = recipe_from_config(recipe.get_config())
        assert type(rebuilt) is type(recipe)
        assert rebuilt.get_config() == recipe.get_config()


@pytest.mark.parametrize(
    "path", sorted(pathlib.Path(__file__).parents[2].glob("recipes/configs/*.yaml")),
    ids=lambda path: path.name,
)
def test_every_shipped_config_builds_its_recipe(path):
    config = read_config_file(path)["recipe"]
    recipe = recipe_from_config(config)
    rebuilt = recipe_from_config(recipe.get_config())
    assert rebuilt.get_config() == recipe.get_config()
    for key, value in config.items():
        if key == "targets" and isinstance(value, str):
            value = [value]
        if key != "base":  # a nested recipe is compared as its own config
            assert recipe.get_config()[key] == value, key


def test_from_yaml_and_json_files(tmp_path):
    yaml_file = tmp_path / "lora.yaml"
    yaml_file.write_text(
        "recipe:\n  method: lora\n  rank: 4\n  alpha: 32\n  targets: [query, value]\n"
        "training:\n  learning_rate: 0.001\n"
    )
    recipe = recipe_from_file(yaml_file)
    assert isinstance(recipe, LoRA) and (recipe.rank, recipe.alpha) == (4, 32)
    json_file = tmp_path / "lora.json"
    json_file.write_text(json.dumps({"method": "lora", "rank": 2, "dropout": 0.1}))
    assert LoRA.from_file(json_file).get_config()["dropout"] == 0.1


def test_from_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        recipe_from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "sorcery"}))
    with pytest.raises(ValueError, match="method='sorcery'"):
        recipe_from_file(bad)
    freeze = tmp_path / "freeze.json"
    freeze.write_text(json.dumps({"method": "freeze"}))
    with pytest.raises(ValueError, match="method='freeze'"):
        LoRA.from_file(freeze)


def test_compile_sets_the_documented_training_setup():
    model = testing.tiny_causal_lm("gemma")
    recipe = LoRA()
    recipe.apply(model)
    recipe.compile(model, learning_rate=3e-4, total_steps=100, gradient_accumulation_steps=2)
    optimizer = model.optimizer
    assert type(optimizer).__name__ == "AdamW"
    assert optimizer.gradient_accumulation_steps == 2
    assert optimizer.clipnorm == 1.0
    assert float(optimizer.learning_rate) == 0.0  # warm-up starts at zero
    assert model.loss.from_logits
    # Accumulation normalises through TokenNormalizedBatches, so no per-batch mean.
    assert model.loss.reduction == "sum_over_batch_size"
    recipe.compile(model)
    assert model.loss.reduction == "mean_with_sample_weight"


def test_pinning_target_paths_touches_only_the_recipes_own_arguments():
    from kerasft.recipes import IA3, Adapters, Classifier

    paths = ["decoder_block_0/attention/value"]
    ia3 = IA3(targets=["value", "ffw_linear"]).with_target_paths(paths)
    assert ia3.get_config() == IA3(targets=paths).get_config()
    lora = LoRA(rank=2, alpha=3.0, rank_pattern={"value": 4}).with_target_paths(paths)
    assert lora.get_config() == LoRA(rank=2, alpha=3.0, rank_pattern={"value": 4}, targets=paths).get_config()
    classifier = Classifier(3, base=LoRA(targets="attention")).with_target_paths(paths)
    assert classifier.base.targets == tuple(paths)
    adapters = Adapters()
    assert adapters.with_target_paths(paths) is adapters


def test_the_record_keeps_every_applied_recipe_with_its_layers():
    from kerasft.recipes import IA3
    from kerasft.recipes.base import applied_recipes, split_merged_recipes
    from kerasft import merge_adapters

    model = testing.tiny_causal_lm("gemma")
    LoRA(rank=2, targets=("query",)).apply(model)
    IA3(targets=("value",)).apply(model)
    entries = applied_recipes(model)
    assert [e.config["method"] for e in entries] == ["lora", "ia3"]
    assert sorted(entries[0].target_paths) == [f"decoder_block_{i}/attention/query" for i in (0, 1)]
    assert sorted(entries[1].target_paths) == [f"decoder_block_{i}/attention/value" for i in (0, 1)]
    assert all("lora" in p for p in entries[0].trained_paths)
    assert all("ia3" in p for p in entries[1].trained_paths)
    assert split_merged_recipes(model) == ([], entries)
    merge_adapters(model)
    assert split_merged_recipes(model) == (entries, [])
