"""kerasft.finetune: one entry point runs every shipped config."""

import json
import pathlib

import numpy as np
import pytest

from kerasft import finetune
from kerasft.targeting import adapter_wrappers

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
    if (config.get("model") or {}).get("keep_quantized"):
        # The tiny model has no GGUF file; tests/models/test_gguf_llama_cpp.py runs the real one.
        values["model.keep_quantized"] = "false"
    if "distribution" in config:
        # A 1 x 1 mesh on the one device here; tests/test_distribution.py runs 8.
        values["distribution.data"] = 1
        values["distribution.model"] = 1
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
    config = finetune.load_config(path)
    if finetune.tasks.task_name(config) not in TINY_DATA:
        pytest.skip("preference and GRPO configs: tests/test_finetune_preference.py runs them")
    overrides = [*tiny_overrides(path, tmp_path), "check_reload=true"]
    result = finetune.main(["--config", str(path), *sum((["--set", o] for o in overrides), [])])
    after = result["after"]
    assert all(np.isfinite(v) for k, v in after.items() if k != "outputs")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Every method's adapter reloads onto a fresh base with the same outputs.
    assert saved["reload_max_abs_difference"] < 1e-4
    assert saved["training"]["rows"] > 0 and saved["training"]["tokens"] > 0
    checkpoint = tmp_path / "run" / "checkpoint" / "training_checkpoint.safetensors"
    assert checkpoint.is_file() == config["training"].get("checkpoint", False)
    recipe = config["recipe"]
    if recipe.get("residual_rank") or recipe.get("init") == "residual":
        fit = saved["initialization"]
        assert fit["mean_relative_error_after"] < fit["mean_relative_error_before"]
    else:
        assert "initialization" not in saved


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


def test_classifier_checks_the_reload_and_trains_on_the_rows_it_says(tmp_path, capsys):
    path = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "classifier.yaml"
    overrides = tiny_overrides(path, tmp_path)
    result = finetune.main(["--config", str(path), *sum((["--set", o] for o in overrides), [])])
    # classifier.yaml asks for the reload check: the head + LoRA reload exactly.
    assert result["reload_max_abs_difference"] < 1e-5
    assert result["training"]["rows"] == 12 and result["training"]["sequence_length"] == 16
    printed = capsys.readouterr().out
    assert "on 12 rows of 16 tokens" in printed
    assert "Reloaded the adapter onto a fresh base: max |output difference|" in printed


def test_calibration_data_the_recipe_would_ignore_names_the_config_key(tmp_path):
    path = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "qlora.yaml"
    overrides = [*tiny_overrides(path, tmp_path), "recipe.residual_rank=0"]
    with pytest.raises(ValueError, match=r"calibration_data.*`data\.calibration_examples`=4; set it to null"):
        finetune.main(["--config", str(path), *sum((["--set", o] for o in overrides), [])])


def test_merge_runs_the_recipes_merge_verb_with_the_sections_options(tmp_path):
    path = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "sft_lora.yaml"
    # LoRA's merge takes no option: `requantize` is refused (naming the file), not ignored.
    with pytest.raises(ValueError, match=r"LoRA\.merge takes the options \[\].*requantize=False.*`merge` section of .*sft_lora\.yaml"):
        finetune.load_config(path, ["merge.requantize=false"])
    overrides = [*tiny_overrides(path, tmp_path), "merge={}"]
    result = finetune.main(["--config", str(path), *sum((["--set", o] for o in overrides), [])])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["merge"]["layers"] == 14  # attention + mlp kernels of 2 blocks
    assert saved["merge"]["max_abs_logit_difference"] < 1e-4
    assert not adapter_wrappers(result["model"])  # the wrappers are gone


def test_keep_quantized_needs_the_gguf_checkpoint():
    from kerasft.finetune.models import load_model

    with pytest.raises(ValueError, match=r"keep_quantized.*Received: name='tiny', keep_quantized=True"):
        load_model("tiny", keep_quantized=True)
