"""kerasft.tuning.search: trials through the entry point, the best has the lowest objective."""

import csv
import pathlib

import pytest
import yaml

from kerasft import finetune, tuning

CONFIG = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "sft_lora.yaml"
TINY = ["model.name=tiny", "model.dtype=null", "training.epochs=1", "training.batch_size=4",
        "data.train_examples=8", "data.eval_examples=2", "data.generation_max_length=12",
        "data.sequence_length=48", "show_examples=0"]


@pytest.mark.slow  # two whole runs of the entry point (load, score, fit, score, save)
def test_search_writes_a_table_whose_best_row_is_the_lowest(tmp_path):
    config = finetune.load_config(CONFIG, [*TINY, f"output_dir={tmp_path}"])
    space = {"learning_rate": [1e-5, 5e-2], "targets": [["attention"]]}
    result = tuning.search(config, space=space, budget=2, steps=2, validation_examples=4)
    root = tmp_path / "search"
    with open(root / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 == len(result["trials"])
    losses = [float(row["val_response_loss"]) for row in table]
    assert float(table[0]["val_response_loss"]) == min(losses)
    assert result["best"]["val_response_loss"] == min(losses)
    assert {row["learning_rate"] for row in table} == {"1e-05", "0.05"}
    assert all(row["optimizer_steps"] == "2" for row in table)
    # The larger rate moves a random model further in 2 steps: it wins.
    assert result["best"]["learning_rate"] == 5e-2
    best = yaml.safe_load((root / "best_config.yaml").read_text())
    assert best["training"]["learning_rate"] == 5e-2 and best["recipe"]["targets"] == ["attention"]
    assert best["training"]["max_steps"] == 2
    # The best config is a valid run config.
    finetune.load_config(root / "best_config.yaml")
    assert (root / "results.md").read_text().count("\n") == 4
    # Trials score the held-out split by perplexity only, and never the base model.
    assert all(row["held_out_perplexity"] > 1.0 for row in result["trials"])
    import json

    metrics = json.loads((root / "trials" / table[0]["trial"] / "metrics.json").read_text())
    assert metrics["before"] is None and set(metrics["after"]) == {"perplexity"}
    assert metrics["after"]["perplexity"] == float(table[0]["held_out_perplexity"])


def test_bad_arguments_are_named(tmp_path):
    config = finetune.load_config(CONFIG, [*TINY, f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="rank=4"):
        tuning.search(config, space={"rank": 4})
    with pytest.raises(ValueError, match="budget=0"):
        tuning.search(config, space={"rank": [4]}, budget=0)
    trial = tuning.trial_config(config, {"rank": 2, "data.replay_fraction": 0.1}, tmp_path, 3, 8)
    assert trial["recipe"]["rank"] == 2 and trial["data"]["replay_fraction"] == 0.1
    assert trial["_search_trial"] is True and trial["training"]["max_steps"] == 3
