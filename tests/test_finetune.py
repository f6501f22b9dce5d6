"""kerasft.finetune: one entry point runs every shipped config."""

import json
import pathlib

import numpy as np
import pytest

from kerasft import finetune

CONFIGS = sorted(pathlib.Path(__file__).parents[1].joinpath("recipes", "configs").glob("*.yaml"))

# Sizes that make any shipped config run in seconds on the tiny model.
TINY = {
    "model.name": "tiny", "model.dtype": "null", "training.epochs": 1, "training.batch_size": 4,
    "show_examples": 1,
}
TINY_DATA = {
    "instruction": {"data.train_examples": 8, "data.eval_examples": 4,
                    "data.generation_max_length": 24, "data.sequence_length": 24},
    "text": {"training.max_train_rows": 8, "data.eval_characters": 300,
             "data.sequence_length": 24},
    "classification": {"data.train_examples": 12, "data.eval_examples": 8,
                       "data.sequence_length": 16},
}


def tiny_overrides(path, tmp_path):
    """`--set` values (without the flag) that shrink a shipped config to seconds."""
    config = finetune.load_config(path)
    task = finetune.tasks.task_name(config)
    values = {**TINY, **TINY_DATA[task], "output_dir": str(tmp_path / "run")}
    if "calibration_examples" in config["data"]:
        values["data.calibration_examples"] = 4
    if config["recipe"]["method"] == "qlora":
        values["recipe.group_size"] = 8  # the tiny model's kernels are 16 and 32 wide
    if "max_train_rows" not in config["training"]:
        values.pop("training.max_train_rows", None)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_validates(path):
    config = finetune.load_config(path)
    assert config["recipe"]["method"]
    assert finetune.tasks.task_name(config) in finetune.tasks.TASK_KEYS


def test_sft_lora_runs_on_the_tiny_model_and_trains(tmp_path):
    path = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "sft_lora.yaml"
    overrides = [*tiny_overrides(path, tmp_path), "training.learning_rate=0.01"]
    result = finetune.main(["--config", str(path), *sum((["--set", o] for o in overrides), [])])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["before"]["perplexity"] == pytest.approx(result["before"]["perplexity"])
    # Training on 8 definitions moves the held-out perplexity of a random model down.
    assert saved["after"]["perplexity"] < saved["before"]["perplexity"]
    assert saved["training"]["optimizer_steps"] == 2
    assert (tmp_path / "run" / "adapter" / "adapter.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_runs_on_the_tiny_model(path, tmp_path):
    overrides = tiny_overrides(path, tmp_path)
    result = finetune.main(["--config", str(path), *sum((["--set", o] for o in overrides), [])])
    after = result["after"]
    assert all(np.isfinite(v) for k, v in after.items() if k != "outputs")
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_unknown_keys_name_the_file_the_key_and_the_valid_keys(tmp_path):
    path = tmp_path / "run.yaml"
    source = (pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "sft_lora.yaml").read_text()
    path.write_text(source.replace("  epochs: 1", "  epochs: 1\n  epoch: 2"))
    with pytest.raises(ValueError, match=r"training\.epoch.*run\.yaml.*Valid keys"):
        finetune.load_config(path)
    with pytest.raises(ValueError, match=r"data\.shuffle_buffer"):
        finetune.load_config(CONFIGS[0], ["data.shuffle_buffer=3"])


def test_merge_is_refused_for_tasks_that_cannot_merge_and_score():
    path = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "continued_pretraining.yaml"
    with pytest.raises(ValueError, match="merge.*instruction"):
        finetune.load_config(path, ["merge.requantize=false"])
