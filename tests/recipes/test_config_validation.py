"""Issue 13 item 9: config errors name the file, the section and key, and the valid keys."""

import json
import pathlib
import re

import keras
import numpy as np
import pytest

import kerasft
from kerasft import configs, finetune, testing
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


# The run configs: `kerasft.finetune.load_config` checks every section's keys.

# The task each shipped config runs (a new config is added here, with its task).
SHIPPED_TASKS = {
    "sft_lora.yaml": "instruction", "sft_lora_gpu.yaml": "instruction", "qlora.yaml": "instruction",
    "classifier.yaml": "classification", "continued_pretraining.yaml": "text",
    **{name: "instruction" for name in (
        "dora.yaml", "ia3.yaml", "adapters.yaml", "prefix_tuning.yaml", "prompt_tuning.yaml",
        "ptuning.yaml", "sft_lora_mesh.yaml", "sft_lora_gguf.yaml")},
    "dpo.yaml": "preference", "reward_model.yaml": "preference", "grpo.yaml": "grpo",
}


def test_every_shipped_config_passes_the_runners_schema():
    shipped = sorted(p.name for p in (ROOT / "recipes/configs").glob("*.yaml"))
    assert shipped == sorted(SHIPPED_TASKS)
    for name, task in SHIPPED_TASKS.items():
        config = finetune.load_config(ROOT / "recipes/configs" / name)
        assert finetune.tasks.task_name(config) == task, name


def test_no_script_under_recipes_imports_another():
    # recipes/ holds configs (run by `kerasft --config`) and at most showcase
    # scripts that call the library: none is a library for the others.
    scripts = sorted((ROOT / "recipes").rglob("*.py"))
    names = {p.stem for p in scripts}
    for script in scripts:
        text = script.read_text()
        imported = set(re.findall(r"^\s*(?:from|import)\s+(\w+)", text, flags=re.M))
        assert "sys.path" not in text and not imported & names, script


def test_unknown_training_key_of_a_run_config_is_refused(tmp_path):
    text = (ROOT / "recipes/configs/sft_lora.yaml").read_text()
    path = write(tmp_path, "sft.yaml", text.replace("  epochs: 1", "  epochs: 1\n  warmup_step: 3"))
    with pytest.raises(ValueError) as error:
        finetune.load_config(path)
    message = str(error.value)
    assert "['training.warmup_step']" in message and str(path) in message
    assert "`training` section" in message and "'gradient_accumulation_steps'" in message
    # The classifier fits arrays and does not support accumulation: refused, not ignored.
    text = (ROOT / "recipes/configs/classifier.yaml").read_text()
    path = write(tmp_path, "c.yaml", text.replace("  epochs: 1", "  epochs: 1\n  gradient_accumulation_steps: 4"))
    with pytest.raises(ValueError, match=r"\['training.gradient_accumulation_steps'\] in the `training` section of .*c.yaml.*classification task"):
        finetune.load_config(path)
    # Only the text task samples its training rows: elsewhere the key would be ignored.
    with pytest.raises(ValueError, match=r"\['training.max_train_rows'\] .*instruction task"):
        finetune.load_config(ROOT / "recipes/configs/dora.yaml", ["training.max_train_rows=8"])
    config = finetune.load_config(ROOT / "recipes/configs/continued_pretraining.yaml",
                                  ["training.max_train_rows=8"])
    assert config["training"]["max_train_rows"] == 8


def test_run_flags_must_be_booleans(tmp_path):
    path = ROOT / "recipes/configs/classifier.yaml"
    with pytest.raises(ValueError, match=r"`check_reload` must be true or false, in .*classifier.yaml.*Received: check_reload='yes please'"):
        finetune.load_config(path, ["check_reload='yes please'"])
    with pytest.raises(ValueError, match=r"`training.checkpoint` must be true or false.*Received: training.checkpoint=1"):
        finetune.load_config(path, ["training.checkpoint=1"])


def test_overrides_and_missing_keys_are_checked_too(tmp_path):
    path = ROOT / "recipes/configs/sft_lora.yaml"
    with pytest.raises(ValueError, match=r"\['training.gradient_accumulation_step'\] .*--set training.gradient_accumulation_step=2"):
        finetune.load_config(path, ["training.gradient_accumulation_step=2"])
    with pytest.raises(ValueError, match=r"Unknown key \['ranke'\] for method 'lora' in the `recipe` section of"):
        finetune.load_config(path, ["recipe.ranke=2"])
    config = finetune.load_config(path, ["training.gradient_accumulation_steps=2"])
    assert config["training"]["gradient_accumulation_steps"] == 2
    text = path.read_text().replace("  batch_size: 8\n", "")
    short = write(tmp_path, "short.yaml", text)
    with pytest.raises(ValueError, match=r"Missing key \['training.batch_size'\] in the `training` section"):
        finetune.load_config(short)


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


def test_main_job_fits_shuffled_batches_with_gradient_accumulation(tmp_path):
    # The main job's config through the runner, on the tiny model: 16 examples in
    # batches of 4 are 4 micro-batches, 2 per optimizer step.
    result = finetune.main([
        "--config", str(ROOT / "recipes/configs/sft_lora.yaml"),
        *sum((["--set", o] for o in [
            "model.name=tiny", "data.sequence_length=32", "data.train_examples=16",
            "data.eval_examples=4", "data.generation_max_length=32", "training.batch_size=4",
            "training.gradient_accumulation_steps=2", "recipe.targets=[query, value]",
            "recipe.rank=2", "show_examples=0", f"output_dir={tmp_path}",
        ]), []),
    ])
    recipe, model = result["recipe"], result["model"]
    assert isinstance(recipe, LoRA) and recipe.rank == 2
    assert int(model.optimizer.iterations) == 2  # 4 micro-batches, 2 per optimizer step
    assert result["training"]["optimizer_steps"] == 2 and result["training"]["rows"] == 16
    assert model.preprocessor is not None  # restored for generate
