"""A training checkpoint that resumes exactly: trained weights, optimizer, step.

Keras's LoRA reload zeroes A and B (PITFALLS #2) and a plain `save_weights`
writes the whole frozen base. `TrainingCheckpoint` writes only what training
changes: the trainable variables, the optimizer's variables (moments, step
counter, accumulators) and the random-generator states, in one safetensors
file replaced atomically, so a run killed at any moment leaves the previous
checkpoint intact.

The file's metadata also records the run it belongs to: a SHA-256 fingerprint
of the recipe, optimizer and data configs (`kerasft.run_fingerprint`), so a new
run started in the same folder is not silently resumed from someone else's
state.
"""

import json
import os
import pathlib
import warnings

import keras
import numpy as np

from kerasft.optimizers import OptimizerStepSchedule, learning_rate_schedule, micro_batch_count
from kerasft.run_fingerprint import (
    canonical_json,
    config_differences,
    training_config,
    training_fingerprint,
)
from kerasft.tensor_files import load_tensors, save_tensors

CHECKPOINT_FILE = "training_checkpoint.safetensors"
ON_MISMATCH = ("error", "restart", "resume")


def _rng_state_variables(model):
    weights = {id(v) for v in model.weights}
    return [v for v in model.non_trainable_variables if id(v) not in weights]


def _checkpoint_variables(model):
    """`{key: variable}` of everything a resumed run needs, in a stable order."""
    variables = {}
    for variable in model.trainable_variables:
        variables[f"model/{variable.path}"] = variable
    for i, variable in enumerate(_rng_state_variables(model)):
        variables[f"rng/{i}/{variable.path}"] = variable
    for i, variable in enumerate(model.optimizer.variables):
        # Drop the optimizer's own name (`adam_w_3/...`), which differs per instance.
        variables[f"optimizer/{i}/{variable.path.partition('/')[2]}"] = variable
    return variables


def _micro_batches(optimizer):
    # A LossScaleOptimizer delegates the counters to its inner optimizer.
    return micro_batch_count(optimizer)


def save_training_checkpoint(model, directory, epoch=0, batches=None, config=None):
    """Writes the training state of a compiled `model` to `directory`.

    Args:
        model: the compiled model being trained.
        directory: the checkpoint folder (created if missing).
        epoch: epochs completed.
        batches: micro-batches seen so far; default the optimizer's micro-batch
            counter.
        config: the run's `training_config` (default: computed now, without a
            data config).

    Returns:
        The number of micro-batches recorded.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variables = _checkpoint_variables(model)
    if batches is None:
        batches = _micro_batches(model.optimizer)
    if config is None:
        config = training_config(model)
    optimizer_steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    config_json = canonical_json(config)
    metadata = {
        "format": "kerasft-training",
        "batches": str(batches),
        "optimizer_steps": str(optimizer_steps),
        "epoch": str(epoch),
        "config": config_json,
        "fingerprint": training_fingerprint(config),
    }
    save_tensors(variables, directory / CHECKPOINT_FILE, metadata=metadata)
    return batches


def _read_raw_metadata(directory):
    path = pathlib.Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.metadata() or {}


def read_checkpoint_metadata(directory):
    """Where the checkpoint in `directory` stands, or None if there is none.

    Returns:
        `{"batches", "optimizer_steps", "epoch", "step"}`: micro-batches seen
        (skip that many batches of the data to resume), optimizer steps taken
        (`batches // gradient_accumulation_steps`), epochs completed, and
        `step`, the same count as `batches`.
    """
    metadata = _read_raw_metadata(directory)
    if metadata is None:
        return None
    # Checkpoints from before `batches` was recorded hold only `step`.
    batches = int(metadata.get("batches", metadata.get("step", 0)))
    return {
        "batches": batches,
        "optimizer_steps": int(metadata.get("optimizer_steps", metadata.get("step", 0))),
        "epoch": int(metadata.get("epoch", 0)),
        "step": batches,
    }


def _schedule_end(optimizer):
    """The optimizer step at which the learning-rate schedule has ended, or None."""
    schedule = learning_rate_schedule(optimizer)
    if isinstance(schedule, OptimizerStepSchedule):
        schedule = schedule.schedule
    schedules = keras.optimizers.schedules
    if isinstance(schedule, schedules.CosineDecay):
        return int(schedule.decay_steps) + int(schedule.warmup_steps or 0)
    if isinstance(schedule, schedules.PolynomialDecay) and not schedule.cycle:
        return int(schedule.decay_steps)
    return None


def restore_training_checkpoint(model, directory):
    """Loads a checkpoint into a compiled `model` with the same recipe applied.

    Every key and shape is checked before any variable is assigned, so a
    mismatching checkpoint leaves the model as it was. The run fingerprint is
    not checked here (`TrainingCheckpoint` does that).

    Returns:
        `read_checkpoint_metadata(directory)` of the restored checkpoint.

    Raises:
        FileNotFoundError: if `directory` holds no checkpoint.
        ValueError: if the checkpoint's tensors (keys or shapes) do not match
            the model's.
    """
    metadata = read_checkpoint_metadata(directory)
    path = pathlib.Path(directory) / CHECKPOINT_FILE
    if metadata is None:
        raise FileNotFoundError(
            f"No {CHECKPOINT_FILE} to resume from. Received: directory={str(directory)!r}"
        )
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    tensors = load_tensors(path)
    variables = _checkpoint_variables(model)
    if set(tensors) != set(variables):
        raise ValueError(
            f"The checkpoint {str(path)!r} does not match this model's training state. "
            f"Received: missing {sorted(set(variables) - set(tensors))[:5]}, unexpected "
            f"{sorted(set(tensors) - set(variables))[:5]}"
        )
    for key, variable in variables.items():
        file_shape, model_shape = tuple(np.shape(tensors[key])), tuple(variable.shape)
        if file_shape != model_shape:
            raise ValueError(
                f"The checkpoint {str(path)!r} does not fit this model (another rank or "
                f"model?): tensor {key!r} has shape {file_shape} in the file and "
                f"{model_shape} in the model. Received: directory={str(directory)!r}"
            )
    for key, variable in variables.items():
        variable.assign(np.asarray(tensors[key]).astype(keras.backend.standardize_dtype(variable.dtype)))
    return metadata


def _check_writable(directory):
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".kerasft-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OSError(
            "TrainingCheckpoint cannot create or write its checkpoint folder "
            f"({type(error).__name__}: {error.strerror or error}). "
            f"Received: directory={str(directory)!r}"
        ) from error


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the training state every `save_every_steps` batches and each epoch end.

    At the start of `fit()` the folder is created and checked for writing (an
    `OSError` naming it is raised before any batch trains). With `resume=True`,
    a checkpoint found in `directory` is restored first (weights, optimizer
    moments and accumulators, step counter), so the schedule and the optimizer
    continue where the killed run stopped. `restored` then holds
    `{"batches", "optimizer_steps", "epoch", "step"}`: `batches` counts
    micro-batches (under gradient accumulation, `optimizer_steps` is
    `batches // gradient_accumulation_steps`) and `step` equals `batches`.
    Feed the data from batch `restored["batches"]` on (or pass
    `initial_epoch=restored["epoch"]` when saving at epoch ends only) to
    reproduce the uninterrupted run. Under accumulation with
    `TokenNormalizedBatches`, make `save_every_steps` a multiple of the
    accumulation steps so the resumed data starts on a window boundary.

    Each checkpoint records its run: the applied recipe's config, the
    optimizer's config (learning-rate schedule included) and `data_config`,
    as canonical JSON with its SHA-256. On resume these are compared with the
    new run's; what happens on a difference is set by `on_mismatch`. The data
    is known only through `data_config` (the batches are not seen before
    training starts, and a resumed run is fed fewer of them), so pass one to
    guard against resuming on other data.

    A checkpoint whose optimizer step is at the end of its learning-rate
    schedule (a finished run) is not resumed: training on would use the
    schedule's final rate (0 by default). A `ValueError` says so.

    Args:
        directory: where `training_checkpoint.safetensors` lives.
        save_every_steps: batches (micro-batches) between saves (None: epoch
            ends only).
        resume: restore an existing checkpoint at the start of training.
        data_config: any JSON-able description of the training data (dataset,
            split, seed, sample count, ...), part of the fingerprint.
        on_mismatch: when the checkpoint's run differs from this one (or it
            carries no fingerprint): `"error"` (default) raises a `ValueError`
            naming the directory and the differing keys of recipe, optimizer
            and data; `"restart"` warns, leaves the model untouched and
            trains from scratch (the next save replaces the old checkpoint);
            `"resume"` warns and restores it anyway (shapes still checked).
    """

    def __init__(
        self,
        directory,
        save_every_steps=None,
        resume=True,
        data_config=None,
        on_mismatch="error",
    ):
        super().__init__()
        if save_every_steps is not None and (
            not isinstance(save_every_steps, int) or save_every_steps <= 0
        ):
            raise ValueError(
                "`save_every_steps` must be a positive integer or None. Received: "
                f"save_every_steps={save_every_steps!r}"
            )
        if on_mismatch not in ON_MISMATCH:
            raise ValueError(
                f"`on_mismatch` must be one of {ON_MISMATCH}. Received: on_mismatch={on_mismatch!r}"
            )
        try:
            json.dumps(data_config, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(
                "`data_config` must be JSON-able (dicts, lists, strings, finite numbers, "
                f"booleans, None): {error}. Received: data_config={data_config!r}"
            ) from error
        self.directory = pathlib.Path(directory)
        self.save_every_steps = save_every_steps
        self.resume = resume
        self.data_config = data_config
        self.on_mismatch = on_mismatch
        self.restored = None
        self._epoch = 0
        self._batches = 0
        self._batches_before = 0
        self._config = None

    def on_train_begin(self, logs=None):
        self._batches = 0
        self.restored = None
        _check_writable(self.directory)
        # Fingerprinted before any restore or training, so a schedule or rate
        # changed by training (e.g. ReduceLROnPlateau) does not change it.
        self._config = training_config(self.model, self.data_config)
        self._batches_before = _micro_batches(self.model.optimizer)
        raw = _read_raw_metadata(self.directory) if self.resume else None
        if raw is None:
            return
        if not self._matches(raw):
            return
        self._check_not_finished()
        self.restored = restore_training_checkpoint(self.model, self.directory)
        self._batches_before = self.restored["batches"]

    def _matches(self, raw):
        """Applies `on_mismatch`; True when the checkpoint is to be restored."""
        if raw.get("fingerprint") == training_fingerprint(self._config):
            return True
        if "config" in raw:
            differences = config_differences(json.loads(raw["config"]), self._config)
        else:
            differences = ["the checkpoint carries no run fingerprint (written by an older kerasft)"]
        what = (
            f"The checkpoint in {str(self.directory)!r} was written by another training run: "
            + "; ".join(differences or ["fingerprints differ"])
            + "."
        )
        if self.on_mismatch == "error":
            raise ValueError(
                f"{what} Use another directory, or pass "
                "TrainingCheckpoint(..., on_mismatch='restart') to train from scratch "
                "(overwriting it) or on_mismatch='resume' to restore it anyway. "
                f"Received: directory={str(self.directory)!r}"
            )
        if self.on_mismatch == "restart":
            warnings.warn(f"{what} Training from scratch (on_mismatch='restart').", stacklevel=2)
            return False
        warnings.warn(f"{what} Restoring it anyway (on_mismatch='resume').", stacklevel=2)
        return True

    def _check_not_finished(self):
        metadata = read_checkpoint_metadata(self.directory)
        end = _schedule_end(self.model.optimizer)
        if end is not None and metadata["optimizer_steps"] >= end:
            raise ValueError(
                f"The checkpoint in {str(self.directory)!r} is at the end of its "
                f"learning-rate schedule (optimizer step {metadata['optimizer_steps']} of "
                f"{end}): that run has finished, and resuming it would train at the "
                "schedule's final learning rate. To start a new run, use another directory "
                f"or TrainingCheckpoint(..., resume=False). Received: directory={str(self.directory)!r}"
            )

    def _save(self, epoch):
        save_training_checkpoint(
            self.model,
            self.directory,
            epoch=epoch,
            batches=self._batches_before + self._batches,
            config=self._config,
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # Counting batches here avoids reading the step from the model, which
        # on JAX forces a device-to-host state sync after every batch.
        self._batches += 1
        if self.save_every_steps and self._batches % self.save_every_steps == 0:
            self._save(self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1)

    def get_config(self):
        return {
            "directory": str(self.directory),
            "save_every_steps": self.save_every_steps,
            "resume": self.resume,
            "data_config": self.data_config,
            "on_mismatch": self.on_mismatch,
        }
