"""kerasft.recipes.registry: building recipes by method name from configs and files."""

import pytest

from kerasft.recipes import LoRA
from kerasft.recipes.registry import parse_yaml, read_config_file, recipe_from_config


def test_a_config_builds_its_registered_recipe_and_round_trips():
    recipe = recipe_from_config({"method": "lora", "rank": 4, "targets": ["query"]})
    assert isinstance(recipe, LoRA) and recipe.rank == 4
    assert recipe_from_config(recipe.get_config()).get_config() == recipe.get_config()


def test_unknown_methods_and_keys_name_the_file_and_the_valid_keys():
    with pytest.raises(ValueError, match=r"method='lorra'.*'lora'"):
        recipe_from_config({"method": "lorra"})
    with pytest.raises(ValueError, match=r"ranke.*`recipe` section of run\.yaml.*rank"):
        recipe_from_config({"method": "lora", "ranke": 4}, source="run.yaml", section="recipe")


def test_yaml_reads_exponent_floats_and_files_need_a_known_suffix(tmp_path):
    assert parse_yaml("alpha: 1e-3")["alpha"] == pytest.approx(1e-3)
    path = tmp_path / "run.toml"
    path.write_text("a = 1")
    with pytest.raises(ValueError, match=r"run\.toml"):
        read_config_file(path)
