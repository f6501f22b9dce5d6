"""What a run does around `fit`: validation, early stopping, history files, step budget,
forgetting checks, continuing a saved adapter (the `training:` keys below).

- `training.validation_examples`: validate every epoch on this many records
  of the task's validation split (never trained on, nor the held-out test
  set the run reports); `val_response_loss` is `evaluate.perplexity`'s loss
  on them (`kerasft.validation.ResponseValidation`).
- `training.early_stopping`: patience in epochs on `val_response_loss`
  (needs validation).
- `training.history` (default true): write `output_dir/history/` (CSV, PNG,
  TensorBoard when installed; `kerasft.history.TrainingHistory`).
- `training.max_steps`: stop after this many optimizer steps (the schedule
  is sized to them); the step budget of a hyper-parameter search.
- `training.forgetting`: `{threshold, action}` of a
  `kerasft.evaluate.ForgettingMonitor` run every epoch (`{}` for the
  defaults); `data.replay_fraction` is the mitigation (`kerasft.data.with_replay`).
- `training.init_from`: a saved adapter folder to continue training
  (`kerasft.continual.continue_adapter`) instead of a fresh `apply`.
"""

import math
import pathlib

import keras

EXTRA_TRAINING_KEYS = ["validation_examples?", "early_stopping?", "history?", "max_steps?",
                       "forgetting?", "init_from?"]


def _positive_int(training, key, source="the run config"):
    value = training[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`training.{key}` must be a positive integer, in {source}. "
                         f"Received: {key}={value!r}")
    return value


def fit_options(model, task, config: dict, steps: int, accumulation: int = 1):
    """The extra `fit` and `compile` arguments the config's training keys ask for.

    Args:
        model: the model about to be compiled and fitted.
        task: the run's task (`kerasft.finetune.tasks`).
        config: the run config.
        steps: optimizer steps of the configured epochs.
        accumulation: micro-batches per optimizer step.

    Returns:
        `(steps, fit_kwargs, compile_kwargs)`: the optimizer steps the run
        will take (`max_steps` caps them), `callbacks` for `fit`, and
        keyword arguments for `recipe.compile` (none at present).
    """
    from kerasft.validation import ResponseValidation, StopAfterSteps, early_stopping

    training = config["training"]
    # No compile override: a compiled metric would make training compute full logits.
    callbacks, fit_kwargs, compile_kwargs = [], {}, {}
    if training.get("validation_examples") is not None:
        count = _positive_int(training, "validation_examples")
        # First: the callbacks after it read the validation numbers it logs.
        callbacks.append(ResponseValidation(task.validation_batches(count)))
    if training.get("early_stopping") is not None:
        if not callbacks:
            raise ValueError("`training.early_stopping` needs `training.validation_examples`. "
                             f"Received: early_stopping={training['early_stopping']!r}")
        callbacks.append(early_stopping(_positive_int(training, "early_stopping")))
    if training.get("max_steps") is not None:
        steps = min(steps, _positive_int(training, "max_steps"))
        callbacks.append(StopAfterSteps(steps * accumulation))
    if training.get("forgetting") is not None:
        from kerasft.evaluate.forgetting import ForgettingMonitor

        options = training["forgetting"]
        if not isinstance(options, dict) or not set(options) <= {"threshold", "action"}:
            raise ValueError("`training.forgetting` must be a mapping with `threshold` and/or "
                             f"`action`. Received: forgetting={options!r}")
        callbacks.append(ForgettingMonitor(
            **options, tokenizer=task.tokenizer, sequence_length=config["data"]["sequence_length"],
            batch_size=training["batch_size"]))
    if training.get("history", True):
        from kerasft.history import TrainingHistory

        callbacks.append(TrainingHistory(pathlib.Path(config["output_dir"]) / "history"))
    fit_kwargs["callbacks"] = callbacks
    return steps, fit_kwargs, compile_kwargs


def history_summary(history: keras.callbacks.History) -> dict:
    """The validation numbers of a fit for `metrics.json` (empty without validation)."""
    logs = history.history
    summary = {}
    if "val_response_loss" in logs:
        losses = [float(v) for v in logs["val_response_loss"]]
        summary = {"val_response_loss_per_epoch": losses, "val_response_loss": losses[-1],
                   "val_response_perplexity": math.exp(min(losses[-1], 700.0)),
                   "epochs_run": len(losses)}
    if "forgetting_ratio" in logs:
        summary["forgetting_ratio_per_epoch"] = [float(v) for v in logs["forgetting_ratio"]]
    return summary


def continue_from(model, config: dict):
    """`kerasft.continual.continue_adapter` for `training.init_from`: `(model, trainable)`."""
    from kerasft.continual import continue_adapter

    path = config["training"]["init_from"]
    model = continue_adapter(model, path, method=config["recipe"].get("method"))
    trainable = int(sum(keras.ops.size(v) for v in model.trainable_weights))
    print(f"Continuing the adapter in {path}: {trainable:,} trainable parameters")
    return model, trainable
