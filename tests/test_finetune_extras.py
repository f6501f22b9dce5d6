"""The entry point's training extras: validation, history files, step budget, continuing an adapter."""

import json
import pathlib

import pytest

from kerasft import evaluate, finetune
from kerasft.finetune.tasks import make_task
from kerasft.history import EPOCHS_FILE, PLOT_FILE, STEPS_FILE, read_history

CONFIG = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "sft_lora.yaml"
TINY = ["model.name=tiny", "model.dtype=null", "training.epochs=2", "training.batch_size=4",
        "data.train_examples=8", "data.eval_examples=4", "data.generation_max_length=20",
        "data.sequence_length=48", "training.learning_rate=0.01", "show_examples=0"]


def _run(tmp_path, *extra):
    overrides = [*TINY, f"output_dir={tmp_path}", *extra]
    return finetune.run(finetune.load_config(CONFIG, overrides))


def test_validation_is_logged_written_and_equals_evaluate_perplexity(tmp_path):
    result = _run(tmp_path / "run", "training.validation_examples=6", "training.early_stopping=3")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = finetune.load_config(CONFIG, [*TINY, f"output_dir={tmp_path}"])
    task = make_task(config, result["model"].preprocessor.tokenizer)
    measured = evaluate.perplexity(result["model"], task.validation_batches(6), progress=False)
    assert saved["training"]["val_response_loss"] == pytest.approx(measured["loss"], rel=1e-5)
    epochs = read_history(tmp_path / "run" / "history" / EPOCHS_FILE)
    assert [e["val_response_loss"] for e in epochs] == saved["training"]["val_response_loss_per_epoch"]
    assert len(read_history(tmp_path / "run" / "history" / STEPS_FILE)) == 4
    assert (tmp_path / "run" / "history" / PLOT_FILE).stat().st_size > 5000


def test_max_steps_and_continuing_a_saved_adapter(tmp_path):
    first = _run(tmp_path / "first", "training.max_steps=1", "training.validation_examples=6")
    assert first["training"]["optimizer_steps"] == 1
    assert len(read_history(tmp_path / "first" / "history" / STEPS_FILE)) == 1
    # A step at a negligible learning rate: the continued model stays the saved one, so
    # its held-out perplexity is the first run's final one (a fresh LoRA would score the base's).
    second = _run(tmp_path / "second", f"training.init_from={tmp_path / 'first' / 'adapter'}",
                  "training.max_steps=1", "training.learning_rate=1e-12")
    assert second["after"]["perplexity"] == pytest.approx(first["after"]["perplexity"], rel=1e-5)
    assert abs(second["after"]["perplexity"] - second["before"]["perplexity"]) > 1e-3
    with pytest.raises(ValueError, match="method='dora'"):
        _run(tmp_path / "third", f"training.init_from={tmp_path / 'first' / 'adapter'}",
             "recipe.method=dora")
