"""The training run behind `python -m kerasft.finetune` (see `kerasft.finetune`)."""

import contextlib
import inspect
import json
import pathlib
import time
from typing import Iterable, Sequence

import keras
import numpy as np

from kerasft import configs, evaluate
from kerasft.finetune import extras
from kerasft.finetune.models import load_model
from kerasft.finetune.tasks import TASK_KEYS, TRAINING_KEYS, describe_rows, make_task, task_name
from kerasft.pretokenized import pretokenized
from kerasft.recipes.base import recipe_from_config

SCHEMA = {
    "seed": None,
    "output_dir": None,
    "show_examples?": None,
    "check_reload?": None,
    "model?": ["name?", "dtype?", "keep_quantized?"],
    "data": None,  # checked against the task's keys (`kerasft.finetune.tasks.TASK_KEYS`)
    "recipe": configs.RECIPE,
    "training": None,  # checked against the task's keys (`kerasft.finetune.tasks.TRAINING_KEYS`)
    "merge?": ["requantize?"],
    "distribution?": ["data?", "model?"],  # mesh sizes (`kerasft.distribution`, JAX only)
}


def load_config(path, overrides: Iterable[str] = ()) -> dict:
    """Reads a run config, applies `section.key=value` overrides and validates every key.

    Raises:
        ValueError: naming the file, the section and key, and the valid keys.
    """
    overrides = list(overrides)
    config = configs.load_script_config(path, overrides, schema=SCHEMA)
    source = str(path) + (f" (with --set {' '.join(overrides)})" if overrides else "")
    task = task_name(config)
    configs.check_keys(config["data"], ["task?", *TASK_KEYS[task]], source, section="data")
    try:
        configs.check_keys(config["training"], TRAINING_KEYS[task], source, section="training")
    except ValueError as error:
        raise ValueError(f"{error} (the keys of the {task} task)") from None
    for section, key in ((config, "check_reload"), (config["training"], "checkpoint")):
        if not isinstance(section.get(key, False), bool):
            name = key if section is config else f"training.{key}"
            raise ValueError(f"`{name}` must be true or false, in {source}. "
                             f"Received: {name}={section[key]!r}")
    if not isinstance(config["data"].get("pack", False), bool):  # the instruction task's key
        raise ValueError(f"`data.pack` must be true or false, in {source}. "
                         f"Received: data.pack={config['data']['pack']!r}")
    if config.get("merge") is not None and task != "instruction":
        raise ValueError(
            f"A `merge:` section is supported for the instruction task only, in {source}. "
            f"Received: task={task!r}"
        )
    if config.get("merge") is not None:
        try:
            recipe_from_config(config["recipe"]).check_merge_options(config["merge"])
        except ValueError as error:
            raise ValueError(f"{error} (the `merge` section of {source})") from None
    return config


def _fit(model, task, config):
    """Compiles and fits `model` on the task's training input.

    Returns:
        `{"optimizer_steps", "rows", "sequence_length", "tokens", "train_seconds",
        "loss_per_epoch"}` (`tokens`: unpadded tokens over all epochs).
    """
    training = config["training"]
    recipe = config["_recipe"]
    # Only the token tasks take the key (`load_config` refuses it elsewhere).
    accumulation = training.get("gradient_accumulation_steps", 1)
    train_input = task.train_batches()
    if task.token_batches:
        fit_input, steps_per_epoch = configs.accumulated_batches(train_input, accumulation)
        fit_kwargs = {}
        x = train_input.as_arrays()[0]
    else:
        (fit_input, labels), fit_kwargs = train_input, {"batch_size": training["batch_size"],
                                                          "shuffle": True}
        fit_kwargs["y"] = labels
        steps_per_epoch = -(-len(labels) // training["batch_size"])
        x = fit_input
    rows, length = np.shape(x["token_ids"])
    tokens = int(np.sum(x["padding_mask"])) * training["epochs"]
    if training.get("checkpoint", False):
        from kerasft.callbacks import TrainingCheckpoint

        checkpoint = pathlib.Path(config["output_dir"]) / "checkpoint"
        fit_kwargs["callbacks"] = [TrainingCheckpoint(checkpoint, resume=False)]
    steps = steps_per_epoch * training["epochs"]
    # Validation, early stopping, history files, max_steps, forgetting (kerasft.finetune.extras).
    steps, extra_fit, extra_compile = extras.fit_options(model, task, config, steps, accumulation)
    fit_kwargs["callbacks"] = fit_kwargs.get("callbacks", []) + extra_fit.pop("callbacks")
    fit_kwargs.update(extra_fit)
    recipe.compile(model, learning_rate=training["learning_rate"], total_steps=steps,
                   weight_decay=training.get("weight_decay", 0.01),
                   gradient_accumulation_steps=accumulation, **extra_compile)
    start = time.perf_counter()
    feeding = pretokenized(model) if task.token_batches else contextlib.nullcontext()
    with feeding:  # token batches, shuffled with `seed` in a new order every epoch
        history = model.fit(fit_input, epochs=training["epochs"], verbose=1, **fit_kwargs)
    seconds = time.perf_counter() - start
    losses = [round(float(v), 3) for v in history.history["loss"]]
    print(f"Trained {steps} optimizer steps on {rows} rows of {length} tokens in {seconds:.0f} s "
          f"({tokens / seconds:.0f} tokens/s); mean training loss per epoch: {losses}")
    return {"optimizer_steps": steps, "rows": rows, "sequence_length": length, "tokens": tokens,
            "train_seconds": seconds, "loss_per_epoch": losses, **extras.history_summary(history)}


def _apply_recipe(model, task, config):
    recipe = config["_recipe"]
    kwargs = {}
    calibration = task.calibration_data()
    if calibration is not None and "calibration_data" in inspect.signature(recipe.apply).parameters:
        kwargs["calibration_data"] = calibration
    base_parameters = model.backbone.count_params()
    try:
        adapted = recipe.apply(model, **kwargs)
    except ValueError as error:
        if "calibration_data" not in kwargs or "calibration_data" not in str(error):
            raise
        raise ValueError(
            f"{error} (the calibration data is the config's `data.calibration_examples`="
            f"{config['data']['calibration_examples']}; set it to null for this recipe)"
        ) from error
    model = model if adapted is None else adapted
    trainable = int(sum(keras.ops.size(v) for v in model.trainable_weights))
    print(f"{recipe}: {trainable:,} trainable parameters "
          f"({100 * trainable / base_parameters:.2f}% of the base model)")
    return model, trainable, _initialization(recipe)


def _initialization(recipe):
    """The fit of the quantization error a recipe made at `apply` (QLoRA's residual), or None."""
    errors = getattr(recipe, "initialization_report", None)
    if not errors:
        return None
    start, end = (float(v) for v in np.mean(list(errors.values()), axis=0))
    print(f"Fitted the quantization error: mean relative output error of the {len(errors)} "
          f"quantized targets {start:.3f} -> {end:.3f}")
    return {"targets": len(errors), "mean_relative_error_before": start,
            "mean_relative_error_after": end}


def _predict(model, task, x):
    feeding = pretokenized(model) if task.token_batches else contextlib.nullcontext()
    with feeding:
        return np.asarray(model.predict(x, verbose=0), "float32")


def _check_reload(model, task, config):
    """Loads the saved adapter onto a fresh base; the largest output difference on 8 held-out rows.

    The fresh base is loaded as the run's was (same seed, so the tiny random
    model is the same one).
    """
    from kerasft.adapters import load_adapter

    x = task.probe_inputs(8)
    expected = _predict(model, task, x)
    keras.utils.set_random_seed(config["seed"])
    fresh = _load_model(config)
    reloaded = load_adapter(fresh, pathlib.Path(config["output_dir"]) / "adapter")
    return float(np.max(np.abs(_predict(reloaded, task, x) - expected)))


def _load_model(config):
    model_config = config.get("model") or {}
    return load_model(model_config.get("name", "gemma3-270m"), model_config.get("dtype"),
                      sequence_length=config["data"]["sequence_length"],
                      keep_quantized=model_config.get("keep_quantized", False))


def _merge(model, task, config):
    """`recipe.merge` with the `merge:` options; the merged paths and the largest logit change.

    The change is measured on 8 held-out rows.
    """
    merged = config["_recipe"].merge(model, batch=task.probe_inputs(8), **config["merge"])
    return len(merged["merged"]), float(merged["max_abs_logit_difference"])


def _print_report(task, before, after, config):
    print(f"\n{task.describe()}")
    print(f"{'metric':<34}{'before':>10}{'after':>10}")
    for label, old, new in describe_rows(task, before, after):
        print(f"{label:<34}{old:>10}{new:>10}")
    if "outputs" in after:
        print(f"Metrics: {evaluate.describe_metrics()}")
    count = config.get("show_examples", 0)
    if "outputs" in after and count:
        print("\nGenerations (greedy):")
        for prompt, reference, old, new in task.examples(before, after, count):
            print(f"- {prompt}\n    reference: {reference}\n"
                  f"    before:    {old.strip()[:120]!r}\n    after:     {new.strip()[:120]!r}")


def run(config: dict) -> dict:
    """Runs one training run from a validated config (see `load_config`).

    Returns:
        `{"before", "after", "training", "trainable_parameters", "output_dir",
        "model", "recipe"}` (`before` is None for a task that cannot score the
        base model; `model` is the trained model, merged when the config merges),
        plus `initialization` (a recipe that fitted the quantization error),
        `reload_max_abs_difference` (`check_reload: true`) and `merge`; all but
        the outputs, `model` and `recipe` are also written to
        `output_dir/metrics.json`.
    """
    if config.get("distribution") and keras.distribution.distribution() is None:
        from kerasft.distribution import distribution_from_config

        # The whole run (load, apply, fit, evaluate, reload) under the mesh.
        with distribution_from_config(config["distribution"]).scope():
            return run(config)
    keras.utils.set_random_seed(config["seed"])
    model_config = config.get("model") or {}
    start = time.perf_counter()
    model = _load_model(config)
    print(f"Loaded {model_config.get('name', 'gemma3-270m')} "
          f"({model.backbone.count_params():,} parameters, {model.backbone.dtype_policy.name}) "
          f"in {time.perf_counter() - start:.0f} s")
    config = {**config, "_recipe": recipe_from_config(config["recipe"])}
    task = make_task(config, model.preprocessor.tokenizer)
    # A search trial (`kerasft.tuning`) skips the base model's scores: every trial's are the same.
    before = _scores(task, model) if task.scores_base_model and not config.get("_search_trial") else None
    if config["training"].get("init_from"):  # continue a saved adapter (kerasft.continual)
        (model, trainable), initialization = extras.continue_from(model, config), None
    else:
        model, trainable, initialization = _apply_recipe(model, task, config)
    from kerasft.distribution import distribute_model

    distribute_model(model)  # a no-op without a `distribution:` section
    training = task.fit(model) if hasattr(task, "fit") else _fit(model, task, config)
    after = _scores(task, model)
    output_dir = pathlib.Path(config["output_dir"])
    from kerasft.adapters import save_adapter

    save_adapter(model, output_dir / "adapter")
    summary = {"before": _numbers(before), "after": _numbers(after), "training": training,
               "trainable_parameters": trainable}
    if initialization is not None:
        summary["initialization"] = initialization
    if config.get("check_reload", False):
        summary["reload_max_abs_difference"] = _check_reload(model, task, config)
    if config.get("merge") is not None:
        count, difference = _merge(model, task, config)
        summary["merge"] = {"layers": count, "max_abs_logit_difference": difference,
                            **config["merge"]}
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    _print_report(task, before, after, config)
    checks = []
    if "reload_max_abs_difference" in summary:
        checks.append("Reloaded the adapter onto a fresh base: max |output difference| on 8 "
                      f"held-out rows = {summary['reload_max_abs_difference']:.2e}")
    if "merge" in summary:
        options = ", ".join(f"{key}={value}" for key, value in config["merge"].items())
        checks.append(f"Merged {summary['merge']['layers']} layers"
                      f"{f' ({options})' if options else ''}: max |logit change| = "
                      f"{summary['merge']['max_abs_logit_difference']:.2e}")
    if checks:
        print("\n" + "\n".join(checks))
    print(f"\nAdapter saved to {output_dir / 'adapter'}; metrics in {output_dir / 'metrics.json'}")
    return {**summary, "before": before, "after": after, "output_dir": output_dir,
            "model": model, "recipe": config["_recipe"]}


def _scores(task, model):
    start = time.perf_counter()
    scores = task.evaluate(model)
    print(f"Evaluated in {time.perf_counter() - start:.0f} s: "
          f"{ {k: round(v, 4) for k, v in _numbers(scores).items()} }")
    return scores


def _numbers(scores):
    return None if scores is None else {k: float(v) for k, v in scores.items() if k != "outputs"}


def main(argv: Sequence[str] | None = None) -> dict:
    """`kerasft [train] --config FILE [--set section.key=value]`: see `kerasft.finetune.cli`.

    Returns:
        `run`'s result for `train` (the sub-command may be left out), else
        what the sub-command returns.
    """
    from kerasft.finetune.cli import main as cli_main

    return cli_main(argv)


def cli() -> None:
    """The `kerasft` console script (`kerasft.finetune.cli.cli`): the exit status is 0."""
    from kerasft.finetune.cli import cli as command_line

    command_line()
