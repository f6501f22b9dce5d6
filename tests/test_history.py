"""Validation while training and the history files: numbers logged equal numbers written."""

import math

import numpy as np
import pytest

from kerasft import evaluate, testing
from kerasft.history import EPOCHS_FILE, PLOT_FILE, STEPS_FILE, TrainingHistory, read_history
from kerasft.recipes import LoRA
from kerasft.validation import (
    ResponseLoss,
    ResponseValidation,
    StopAfterSteps,
    early_stopping,
    validation_metrics,
)


def _train(tmp_path, epochs=2, callbacks=(), **fit_kwargs):
    model = LoRA(rank=2).apply(testing.tiny_causal_lm("gemma3"))
    LoRA(rank=2).compile(model, learning_rate=2e-2, total_steps=2 * epochs,
                         weighted_metrics=validation_metrics())
    x, y, w = testing.random_token_batch(batch_size=8, seed=1)
    # Three rows in batches of two: the batches hold different numbers of scored tokens.
    validation = testing.random_token_batch(batch_size=3, seed=2)
    history = TrainingHistory(tmp_path / "history", tensorboard=False)
    logs = model.fit(x, y, sample_weight=w, batch_size=4, epochs=epochs, shuffle=False,
                     validation_data=validation, validation_batch_size=2, verbose=0,
                     callbacks=[history, *callbacks], **fit_kwargs)
    return model, history, logs.history, validation


def _as_batches(arrays, batch_size):
    x, y, w = arrays
    return [({k: v[i:i + batch_size] for k, v in x.items()}, y[i:i + batch_size],
             w[i:i + batch_size]) for i in range(0, len(y), batch_size)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tmp_path_factory.mktemp("run"), *_train(tmp_path_factory.getbasetemp() / "run0")


def test_validation_response_loss_equals_evaluate_perplexity(trained):
    _, model, _, logs, validation = trained
    measured = evaluate.perplexity(model, _as_batches(validation, 2), progress=False)
    assert logs["val_response_loss"][-1] == pytest.approx(measured["loss"], rel=1e-5)
    assert logs["val_response_loss"][0] != logs["val_response_loss"][-1]


def test_csv_and_plot_hold_the_logged_numbers(trained):
    _, model, history, logs, _ = trained
    tmp_path = history.directory.parent
    epochs = read_history(tmp_path / "history" / EPOCHS_FILE)
    steps = read_history(tmp_path / "history" / STEPS_FILE)
    assert [e["epoch"] for e in epochs] == [1, 2]
    for key in ("loss", "val_loss", "val_response_loss", "response_loss", "accuracy"):
        assert [e[key] for e in epochs] == [float(v) for v in logs[key]], key
    assert [e["val_response_perplexity"] for e in epochs] == pytest.approx(
        [math.exp(v) for v in logs["val_response_loss"]])
    # Two batches per epoch; an epoch's last running mean is the epoch's loss.
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert [steps[1]["loss"], steps[3]["loss"]] == [float(v) for v in logs["loss"]]
    # Equal batches: the two batch losses average to the epoch's loss.
    assert (steps[0]["batch_loss"] + steps[1]["batch_loss"]) / 2 == pytest.approx(logs["loss"][0])
    schedule = model.optimizer.learning_rate if not callable(
        getattr(model.optimizer, "_learning_rate", None)) else model.optimizer._learning_rate
    expected = [float(np.asarray(schedule(step))) for step in range(4)]
    assert [s["learning_rate"] for s in steps] == pytest.approx(expected, rel=1e-6)
    png = (tmp_path / "history" / PLOT_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert history.epochs[-1]["step"] == 4


def test_early_stopping_and_step_budget(tmp_path):
    stopper = early_stopping(patience=1, min_delta=1e9)  # nothing counts as an improvement
    _, _, logs, _ = _train(tmp_path, epochs=5, callbacks=[stopper])
    assert len(logs["loss"]) == 2
    budget = StopAfterSteps(3)
    _, history, _, _ = _train(tmp_path / "budget", epochs=5, callbacks=[budget])
    assert len(history.steps) == 3
    with pytest.raises(ValueError, match="patience=0"):
        early_stopping(patience=0)
    with pytest.raises(ValueError, match="tensorboard='yes'"):
        TrainingHistory(tmp_path, tensorboard="yes")


def test_response_loss_metric_by_hand():
    metric = ResponseLoss()
    logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]], "float32"))
    metric.update_state(np.array([[0, 1]]), logits, np.array([[1.0, 0.0]]))
    metric.update_state(np.array([[2, 1]]), logits, np.array([[1.0, 1.0]]))
    expected = (-math.log(0.5) - math.log(0.25) - math.log(0.8)) / 3
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)


def test_response_validation_callback_logs_evaluate_perplexity(tmp_path):
    validation = testing.random_token_batch(batch_size=3, seed=2)
    batches = _as_batches(validation, 2)
    model = LoRA(rank=2).apply(testing.tiny_causal_lm("gemma3"))
    LoRA(rank=2).compile(model, learning_rate=2e-2)  # the default: no full-logits metric
    x, y, w = testing.random_token_batch(batch_size=8, seed=1)
    history = TrainingHistory(tmp_path, plot=False, tensorboard=False)
    logs = model.fit(x, y, sample_weight=w, batch_size=4, epochs=2, verbose=0,
                     callbacks=[ResponseValidation(batches), history]).history
    measured = evaluate.perplexity(model, batches, progress=False)
    assert logs["val_response_loss"][-1] == measured["loss"]
    assert logs["val_response_perplexity"][-1] == measured["perplexity"]
    assert [e["val_response_loss"] for e in history.epochs] == logs["val_response_loss"]
