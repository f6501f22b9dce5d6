"""A training checkpoint that resumes exactly: trained weights, optimizer, step.

Keras's LoRA reload zeroes A and B (PITFALLS #2) and a plain `save_weights`
writes the whole frozen base. `TrainingCheckpoint` writes only what training
changes: the trainable variables, the optimizer's variables (moments, step
counter, accumulators) and the random-generator states, in one safetensors
file replaced atomically, so a run killed at any moment leaves the previous
checkpoint intact.
"""

import pathlib

import keras
import numpy as np

from kerasft.adapters import load_tensors, save_tensors

CHECKPOINT_FILE = "training_checkpoint.safetensors"


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


def save_training_checkpoint(model, directory, epoch=0):
    """Writes the training state of a compiled `model` to `directory`."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variables = _checkpoint_variables(model)
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    metadata = {"step": str(step), "epoch": str(epoch), "format": "kerasft-training"}
    save_tensors(variables, directory / CHECKPOINT_FILE, metadata=metadata)
    return step


def read_checkpoint_metadata(directory):
    """`{"step": int, "epoch": int}` of the checkpoint in `directory`, or None."""
    path = pathlib.Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata()
    return {"step": int(metadata["step"]), "epoch": int(metadata["epoch"])}


def restore_training_checkpoint(model, directory):
    """Loads a checkpoint into a compiled `model` with the same recipe applied.

    Returns:
        `{"step": ..., "epoch": ...}` of the restored checkpoint.

    Raises:
        FileNotFoundError: if `directory` holds no checkpoint.
        ValueError: if the checkpoint's tensors do not match the model's.
    """
    metadata = read_checkpoint_metadata(directory)
    if metadata is None:
        raise FileNotFoundError(
            f"No {CHECKPOINT_FILE} to resume from. Received: directory={str(directory)!r}"
        )
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    tensors = load_tensors(pathlib.Path(directory) / CHECKPOINT_FILE)
    variables = _checkpoint_variables(model)
    if set(tensors) != set(variables):
        raise ValueError(
            "The checkpoint does not match this model's training state. Received: "
            f"missing {sorted(set(variables) - set(tensors))[:5]}, unexpected "
            f"{sorted(set(tensors) - set(variables))[:5]}"
        )
    for key, variable in variables.items():
        variable.assign(np.asarray(tensors[key]).astype(keras.backend.standardize_dtype(variable.dtype)))
    return metadata


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the training state every `save_every_steps` batches and each epoch end.

    With `resume=True`, a checkpoint found in `directory` at the start of
    `fit()` is restored first (weights, optimizer moments, step counter), so
    the schedule and the optimizer continue where the killed run stopped.
    `restored` then holds `{"step", "epoch"}`; feed the batches from that
    step on (or pass `initial_epoch`) to reproduce the uninterrupted run.

    Args:
        directory: where `training_checkpoint.safetensors` lives.
        save_every_steps: batches between saves (None: epoch ends only).
        resume: restore an existing checkpoint at the start of training.
    """

    def __init__(self, directory, save_every_steps=None, resume=True):
        super().__init__()
        if save_every_steps is not None and (
            not isinstance(save_every_steps, int) or save_every_steps <= 0
        ):
            raise ValueError(
                "`save_every_steps` must be a positive integer or None. Received: "
                f"save_every_steps={save_every_steps!r}"
            )
        self.directory = pathlib.Path(directory)
        self.save_every_steps = save_every_steps
        self.resume = resume
        self.restored = None
        self._epoch = 0
        self._batches = 0

    def on_train_begin(self, logs=None):
        self._batches = 0
        if self.resume and read_checkpoint_metadata(self.directory) is not None:
            self.restored = restore_training_checkpoint(self.model, self.directory)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # Counting batches here avoids reading the step from the model, which
        # on JAX forces a device-to-host state sync after every batch.
        self._batches += 1
        if self.save_every_steps and self._batches % self.save_every_steps == 0:
            save_training_checkpoint(self.model, self.directory, epoch=self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        save_training_checkpoint(self.model, self.directory, epoch=epoch + 1)

    def get_config(self):
        return {
            "directory": str(self.directory),
            "save_every_steps": self.save_every_steps,
            "resume": self.resume,
        }

