"""Issue 13 item 9: config errors name the file, the section and key, and the valid keys."""

import json
import pathlib
import re
import sys

import keras
import numpy as np
import pytest

import kerasft
from kerasft import configs, testing
from kerasft.data import SequenceBatches
from kerasft.losses import TokenNormalizedBatches
from kerasft.recipes import LoRA, QLoRA, recipe_from_config, recipe_from_file
from kerasft.recipes.base import read_config_file

ROOT = pathlib.Path(__file__).parents[2]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_recipe_key_names_the_file_and_the_valid_keys(tmp_path):
    path = write(tmp_path, "lora.yaml", "recipe:\n  method: lora\n  ranke: 4\n")
    for build in (recipe_from_file, LoRA.from_file):
        with pytest.raises(ValueError) as error:
            build(path)
        message = str(error.value)
        assert "['ranke']" in message and str(path) in message and "`recipe` section" in message
        assert "'rank'" in message and "'use_rslora'" in message and "'targets'" in message
        assert "did you mean 'rank'" in message
    # Without a file, still a ValueError listing the keys (not a bare TypeError).
    with pytest.raises(ValueError, match=r"Unknown key \['ranke'\] for method 'lora'\. Valid keys: \['method', 'alpha'"):
        recipe_from_config({"method": "lora", "ranke": 4})


def test_unknown_key_of_a_nested_base_recipe_names_the_file(tmp_path):
    path = write(tmp_path, "c.yaml", "recipe:\n  method: classifier\n  num_classes: 3\n"
                 "  base: {method: lora, ranke: 2}\n")
    with pytest.raises(ValueError, match=rf"{path.name}.*Unknown key \['ranke'\] for method 'lora'"):
        recipe_from_file(path)


def test_empty_targets_in_yaml_says_which_key_is_null(tmp_path):
    path = write(tmp_path, "lora.yaml", "recipe:\n  method: lora\n  targets:\n")
    with pytest.raises(ValueError) as error:
        recipe_from_file(path)
    message = str(error.value)
    assert str(path) in message and "targets=None" in message
    assert "`recipe.targets` is empty (null); remove it to use the default ('query', 'value')" in message
    assert "NoneType" not in message


def test_yaml_scientific_notation_reads_as_a_float(tmp_path):
    path = write(tmp_path, "lora.yaml", "recipe:\n  method: lora\n  alpha: 1e-3\n  dropout: 5E-2\n"
                 "training:\n  learning_rate: 2e-4\n  big: 1e6\n  name: '1e-3'\n")
    config = read_config_file(path)
    assert config["training"] == {"learning_rate": 2e-4, "big": 1e6, "name": "1e-3"}
    assert type(config["training"]["big"]) is float
    recipe = recipe_from_file(path)
    assert (recipe.alpha, recipe.dropout) == (1e-3, 0.05)
    # A quoted value stays a string, and the recipe says so with the file.
    quoted = write(tmp_path, "quoted.yaml", "recipe:\n  method: lora\n  alpha: '1e-3'\n")
    with pytest.raises(ValueError, match=rf"quoted.yaml.*alpha='1e-3'"):
        recipe_from_file(quoted)
    # --set values are parsed the same way.
    overridden = configs.apply_overrides({"training": {}}, ["training.learning_rate=3e-4"])
    assert overridden["training"]["learning_rate"] == 3e-4


@pytest.mark.parametrize(
    "name,text",
    [("bad.yaml", "recipe:\n  method: lora\n   rank: 4\n"), ("bad.json", '{"method": "lora",}')],
)
def test_parse_errors_name_the_file(tmp_path, name, text):
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError, match=rf"(?s)Could not parse config file '{re.escape(str(path))}'.*line"):
        read_config_file(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        recipe_from_file(path)


def test_a_refused_argument_names_the_file(tmp_path):
    path = write(tmp_path, "qlora.json", json.dumps({"method": "qlora", "double_quant": "false"}))
    with pytest.raises(ValueError, match=rf"Bad 'qlora' recipe of {path}: `double_quant` must be True or False. Received: double_quant='false'"):
        QLoRA.from_file(path)


# The scripts' sections: recipes/*.py declare the keys they read.

sys.path.insert(0, str(ROOT / "recipes"))
import classifier as classifier_script  # noqa: E402
import continued_pretraining as continued_pretraining_script  # noqa: E402
import dora as dora_script  # noqa: E402
import qlora as qlora_script  # noqa: E402
import sft_lora as sft_lora_script  # noqa: E402

SCRIPT_SCHEMAS = {
    "sft_lora.yaml": sft_lora_script.CONFIG_SCHEMA,
    "sft_lora_gpu.yaml": sft_lora_script.CONFIG_SCHEMA,
    "qlora.yaml": qlora_script.QLORA_CONFIG_SCHEMA,
    "classifier.yaml": classifier_script.CONFIG_SCHEMA,
    "continued_pretraining.yaml": continued_pretraining_script.CONFIG_SCHEMA,
    **{name: dora_script.CONFIG_SCHEMA for name in (
        "dora.yaml", "ia3.yaml", "adapters.yaml", "prefix_tuning.yaml", "prompt_tuning.yaml",
        "ptuning.yaml")},
}


def test_every_shipped_config_passes_its_scripts_schema():
    shipped = sorted(p.name for p in (ROOT / "recipes/configs").glob("*.yaml"))
    assert shipped == sorted(SCRIPT_SCHEMAS)
    for name, schema in SCRIPT_SCHEMAS.items():
        configs.load_script_config(ROOT / "recipes/configs" / name, schema=schema)


def test_unknown_training_key_of_a_script_config_is_refused(tmp_path):
    text = (ROOT / "recipes/configs/sft_lora.yaml").read_text()
    path = write(tmp_path, "sft.yaml", text.replace("  epochs: 1", "  epochs: 1\n  warmup_step: 3"))
    with pytest.raises(ValueError) as error:
        configs.load_script_config(path, schema=sft_lora_script.CONFIG_SCHEMA)
    message = str(error.value)
    assert "['training.warmup_step']" in message and str(path) in message
    assert "`training` section" in message and "'gradient_accumulation_steps'" in message
    # The classifier fits arrays and does not support accumulation: refused, not ignored.
    text = (ROOT / "recipes/configs/classifier.yaml").read_text()
    path = write(tmp_path, "c.yaml", text.replace("  epochs: 1", "  epochs: 1\n  gradient_accumulation_steps: 4"))
    with pytest.raises(ValueError, match=r"\['training.gradient_accumulation_steps'\] in the `training` section of .*c.yaml"):
        configs.load_script_config(path, schema=classifier_script.CONFIG_SCHEMA)


def test_overrides_and_missing_keys_are_checked_too(tmp_path):
    path = ROOT / "recipes/configs/sft_lora.yaml"
    with pytest.raises(ValueError, match=r"\['training.gradient_accumulation_step'\] .*--set training.gradient_accumulation_step=2"):
        configs.load_script_config(path, ["training.gradient_accumulation_step=2"],
                                   sft_lora_script.CONFIG_SCHEMA)
    with pytest.raises(ValueError, match=r"Unknown key \['ranke'\] for method 'lora' in the `recipe` section of"):
        configs.load_script_config(path, ["recipe.ranke=2"], sft_lora_script.CONFIG_SCHEMA)
    config = configs.load_script_config(path, ["training.gradient_accumulation_steps=2"],
                                        sft_lora_script.CONFIG_SCHEMA)
    assert config["training"]["gradient_accumulation_steps"] == 2
    text = path.read_text().replace("  batch_size: 8\n", "")
    short = write(tmp_path, "short.yaml", text)
    with pytest.raises(ValueError, match=r"Missing key \['training.batch_size'\] in the `training` section"):
        configs.load_script_config(short, schema=sft_lora_script.CONFIG_SCHEMA)


def test_accumulated_batches_train_one_optimizer_step_per_k_batches():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, testing.TINY_VOCABULARY_SIZE, (8, 7)).astype("int32")
    batches = SequenceBatches(ids, np.ones_like(ids, "float32"), np.full(8, 7), batch_size=2)
    same, steps = configs.accumulated_batches(batches, 1)
    assert same is batches and steps == 4
    wrapped, steps = configs.accumulated_batches(batches, 2)
    assert isinstance(wrapped, TokenNormalizedBatches) and steps == 2
    keras.utils.set_random_seed(0)
    model = testing.tiny_causal_lm("gemma3")
    recipe = LoRA(rank=2)
    recipe.apply(model)
    recipe.compile(model, learning_rate=1e-2, gradient_accumulation_steps=2)
    with kerasft.pretokenized(model):
        model.fit(wrapped, epochs=2, verbose=0)
    assert int(model.optimizer.iterations) == 2 * steps
    with pytest.raises(ValueError, match=r"The 4 batches .* gradient_accumulation_steps=3"):
        configs.accumulated_batches(batches, 3)
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps='2'"):
        configs.accumulated_batches(batches, "2")


def test_main_job_train_fits_shuffled_batches_with_gradient_accumulation(tmp_path):
    from kerasft.data import load_wordnet, sample_records

    config = configs.apply_overrides(
        read_config_file(ROOT / "recipes/configs/sft_lora.yaml"),
        ["data.sequence_length=32", "training.batch_size=4", "training.gradient_accumulation_steps=2",
         "recipe.targets=[query, value]", "recipe.rank=2", f"output_dir={tmp_path}"],
    )
    configs.check_config(config, sft_lora_script.CONFIG_SCHEMA, "test")
    keras.utils.set_random_seed(0)
    model = dora_script.load_model("tiny", 32)
    records = sample_records(load_wordnet("validation"), 16, seed=0)
    recipe = sft_lora_script.train(model, records, config)
    assert isinstance(recipe, LoRA) and recipe.rank == 2
    assert int(model.optimizer.iterations) == 2  # 4 micro-batches, 2 per optimizer step
    assert model.preprocessor is not None  # restored for generate
