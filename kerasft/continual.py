"""Continuous improvement: keep training a saved adapter on new data, and what it cost.

`continue_adapter` loads a saved adapter onto a fresh base with its weights
trainable, so `fit` picks up where the saved run ended (the first step's
loss is the saved model's loss; the optimizer's moments start fresh: for an
exact resume of an interrupted run, `kerasft.TrainingCheckpoint` also keeps
the optimizer state). `retention_and_gain` compares old-task and new-task
perplexities before and after the continued training.
"""

import os

import keras

from kerasft.adapters import load_adapter, read_adapter_config, saved_recipes
from kerasft.evaluate.perplexity import perplexity


def continue_adapter(model: keras.Model, directory: str | os.PathLike, method: str | None = None
                     ) -> keras.Model:
    """The base `model` with the adapter in `directory` applied, its weights trainable.

    Args:
        model: a fresh base (as `kerasft.load_adapter` takes).
        directory: a folder written by `kerasft.save_adapter`.
        method: the recipe method the caller will train (e.g. the run
            config's `recipe.method`); a different saved method is an error.

    Returns:
        The adapted model (outputs equal to the saved one's).

    Raises:
        ValueError: if the saved adapter's method is not `method`, or loading
            fails (see `kerasft.load_adapter`).
    """
    saved = [entry["recipe"]["method"] for entry in saved_recipes(read_adapter_config(directory))]
    if method is not None and saved[-1:] != [method]:
        raise ValueError(
            f"The adapter in {str(directory)!r} was trained with {saved}, not the config's "
            f"recipe. Received: method={method!r}"
        )
    model = load_adapter(model, directory)
    if not model.trainable_weights:
        raise ValueError(f"The adapter loaded from {str(directory)!r} left nothing trainable. "
                         f"Received: methods {saved}")
    return model


def task_perplexities(model: keras.Model, tasks: dict) -> dict:
    """`{name: perplexity}` of `model` on each task's held-out `(x, y, sample_weight)` batches."""
    return {name: perplexity(model, batches, progress=False)["perplexity"]
            for name, batches in tasks.items()}


def retention_and_gain(before: dict, after: dict, old: str = "old", new: str = "new") -> dict:
    """Old-task retention against new-task gain, from perplexities before and after.

    Args:
        before, after: `task_perplexities` of the model before and after the
            continued training.
        old, new: the names of the old and new tasks in them.

    Returns:
        `{"retention": before[old] / after[old]` (1.0: the old task kept, below
        1: lost), `"gain": before[new] / after[new]` (above 1: the new task
        learned), and the four perplexities.
    """
    return {"retention": before[old] / after[old], "gain": before[new] / after[new],
            f"{old}_before": before[old], f"{old}_after": after[old],
            f"{new}_before": before[new], f"{new}_after": after[new]}
