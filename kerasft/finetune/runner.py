"""The training run behind `python -m kerasft.finetune` (see `kerasft.finetune`)."""

import argparse
import contextlib
import inspect
import json
import os
import pathlib
import sys
import time
from typing import Iterable, Sequence

import keras
import numpy as np

from kerasft import configs, evaluate
from kerasft.finetune.models import load_model
from kerasft.finetune.tasks import TASK_KEYS, describe_rows, make_task, task_name
from kerasft.pretokenized import pretokenized
from kerasft.recipes.base import recipe_from_config

SCHEMA = {
    "seed": None,
    "output_dir": None,
    "show_examples?": None,
    "model?": ["name?", "dtype?"],
    "data": None,  # checked against the task's keys (`kerasft.finetune.tasks.TASK_KEYS`)
    "recipe": configs.RECIPE,
    "training": ["batch_size", "epochs", "learning_rate", "weight_decay?",
                 "gradient_accumulation_steps?", "max_train_rows?"],
    "merge?": ["requantize?"],
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
    if config.get("merge") is not None and task != "instruction":
        raise ValueError(
            f"A `merge:` section is supported for the instruction task only, in {source}. "
            f"Received: task={task!r}"
        )
    return config


def _fit(model, task, config):
    """Compiles and fits `model` on the task's training input; returns the history and steps."""
    training = config["training"]
    recipe = config["_recipe"]
    accumulation = training.get("gradient_accumulation_steps", 1)
    train_input = task.train_batches()
    if not task.token_batches and accumulation != 1:
        raise ValueError(
            "`training.gradient_accumulation_steps` needs token batches (instruction or text "
            f"tasks); this task fits arrays. Received: gradient_accumulation_steps={accumulation}"
        )
    if task.token_batches:
        fit_input, steps_per_epoch = configs.accumulated_batches(train_input, accumulation)
        fit_kwargs = {}
    else:
        (fit_input, labels), fit_kwargs = train_input, {"batch_size": training["batch_size"],
                                                          "shuffle": True}
        fit_kwargs["y"] = labels
        steps_per_epoch = -(-len(labels) // training["batch_size"])
    steps = steps_per_epoch * training["epochs"]
    recipe.compile(model, learning_rate=training["learning_rate"], total_steps=steps,
                   weight_decay=training.get("weight_decay", 0.01),
                   gradient_accumulation_steps=accumulation)
    start = time.perf_counter()
    feeding = pretokenized(model) if task.token_batches else contextlib.nullcontext()
    with feeding:  # token batches, shuffled with `seed` in a new order every epoch
        history = model.fit(fit_input, epochs=training["epochs"], verbose=1, **fit_kwargs)
    seconds = time.perf_counter() - start
    losses = [round(float(v), 3) for v in history.history["loss"]]
    print(f"Trained {steps} optimizer steps in {seconds:.0f} s; mean training loss per epoch: "
          f"{losses}")
    return {"optimizer_steps": steps, "train_seconds": seconds, "loss_per_epoch": losses}


def _apply_recipe(model, task, config):
    recipe = config["_recipe"]
    kwargs = {}
    calibration = task.calibration_data()
    if calibration is not None and "calibration_data" in inspect.signature(recipe.apply).parameters:
        kwargs["calibration_data"] = calibration
    base_parameters = model.backbone.count_params()
    adapted = recipe.apply(model, **kwargs)
    model = model if adapted is None else adapted
    trainable = int(sum(keras.ops.size(v) for v in model.trainable_weights))
    print(f"{recipe}: {trainable:,} trainable parameters "
          f"({100 * trainable / base_parameters:.2f}% of the base model)")
    return model, trainable


def _merge(model, task, config):
    """Folds the adapters in and returns the largest logit change on 8 held-out rows."""
    from kerasft.adapters import merge_adapters
    from kerasft.recipes.qlora import QLoRA

    batches = task._batches(task.held_out[:8], 8, shuffle=False)
    x, _, _ = batches[0]
    requantize = bool(config["merge"].get("requantize", False))
    if isinstance(config["_recipe"], QLoRA):
        merged = QLoRA.merge(model, requantize=requantize, batch=x)
        return len(merged["merged"]), float(merged["max_abs_logit_difference"])
    with pretokenized(model):
        before = np.asarray(model.predict(x, verbose=0))
        paths = merge_adapters(model)
        after = np.asarray(model.predict(x, verbose=0))
    return len(paths), float(np.max(np.abs(after - before)))


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
        `{"before", "after", "training", "trainable_parameters", "output_dir"}`
        (`before` is None for a task that cannot score the base model), also
        written to `output_dir/metrics.json`.
    """
    keras.utils.set_random_seed(config["seed"])
    model_config = config.get("model") or {}
    start = time.perf_counter()
    model = load_model(model_config.get("name", "gemma3-270m"), model_config.get("dtype"),
                       sequence_length=config["data"]["sequence_length"])
    print(f"Loaded {model_config.get('name', 'gemma3-270m')} "
          f"({model.backbone.count_params():,} parameters, {model.backbone.dtype_policy.name}) "
          f"in {time.perf_counter() - start:.0f} s")
    config = {**config, "_recipe": recipe_from_config(config["recipe"])}
    task = make_task(config, model.preprocessor.tokenizer)
    before = _scores(task, model) if task.scores_base_model else None
    model, trainable = _apply_recipe(model, task, config)
    training = _fit(model, task, config)
    after = _scores(task, model)
    output_dir = pathlib.Path(config["output_dir"])
    from kerasft.adapters import save_adapter

    save_adapter(model, output_dir / "adapter")
    summary = {"before": _numbers(before), "after": _numbers(after), "training": training,
               "trainable_parameters": trainable}
    if config.get("merge") is not None:
        count, difference = _merge(model, task, config)
        summary["merge"] = {"layers": count, "max_abs_logit_difference": difference}
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    _print_report(task, before, after, config)
    if "merge" in summary:
        print(f"\nMerged {summary['merge']['layers']} layers: max |logit change| = "
              f"{summary['merge']['max_abs_logit_difference']:.2e}")
    print(f"\nAdapter saved to {output_dir / 'adapter'}; metrics in {output_dir / 'metrics.json'}")
    return {**summary, "before": before, "after": after, "output_dir": output_dir}


def _scores(task, model):
    start = time.perf_counter()
    scores = task.evaluate(model)
    print(f"Evaluated in {time.perf_counter() - start:.0f} s: "
          f"{ {k: round(v, 4) for k, v in _numbers(scores).items()} }")
    return scores


def _numbers(scores):
    return None if scores is None else {k: float(v) for k, v in scores.items() if k != "outputs"}


def _check_backend():
    """Re-runs the command under JAX when Keras is set to a backend kerasft does not support."""
    if keras.backend.backend() in ("jax", "torch") or os.environ.get("KERAS_BACKEND"):
        return
    print(f"kerasft runs on JAX or PyTorch; Keras is set to {keras.backend.backend()!r} "
          "(keras.json). Running with KERAS_BACKEND=jax.", file=sys.stderr)
    os.environ["KERAS_BACKEND"] = "jax"
    os.execv(sys.executable, [sys.executable, "-m", "kerasft.finetune", *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> dict:
    """The command line: `--config FILE` and repeated `--set section.key=value`."""
    parser = argparse.ArgumentParser(
        prog="kerasft", description="Fine-tune a Gemma-style model from one config file.",
    )
    parser.add_argument("--config", required=True, help="a YAML or JSON run config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (YAML syntax), e.g. --set training.epochs=2")
    args = parser.parse_args(argv)
    if argv is None:
        _check_backend()
    return run(load_config(args.config, args.set))


def cli() -> None:
    """The `kerasft` console script: `main()` without a return value (the exit status is 0)."""
    main()
