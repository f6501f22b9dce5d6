"""What a training run did, written as files a user opens afterwards.

`TrainingHistory` is a Keras callback that writes, into one folder (the
entry point uses `output_dir/history/`, next to the adapter):

- `steps.csv`: one row per batch: `step` (batches seen), `epoch`,
  `learning_rate` (the optimizer's rate for that step), `loss` (Keras's
  running mean over the epoch so far, what the progress bar shows) and
  `batch_loss` (that batch's own loss, recovered from the running means:
  exact when the epoch's batches have the same number of rows, which
  Keras's mean weights them by);
- `epochs.csv`: one row per epoch with every value Keras logged
  (`loss`, `val_loss`, `val_response_loss`, ...) and, for each
  `*response_loss`, the matching `*response_perplexity` (its `exp`);
- `history.png`: loss per step and per epoch (with validation), and the
  learning rate (matplotlib with the Agg backend, imported only here; the
  `plots` extra). Without matplotlib the CSV files are still written and a
  warning says why the plot is missing;
- `tensorboard/`: the same scalars as TensorBoard event files, when the
  `tensorboard` package is importable (`keras.callbacks.TensorBoard`).

Files are rewritten after every epoch, so an interrupted run keeps its
history up to the last finished epoch.
"""

import csv
import importlib.util
import math
import os
import pathlib
import warnings

import keras
import numpy as np

STEPS_FILE = "steps.csv"
EPOCHS_FILE = "epochs.csv"
PLOT_FILE = "history.png"


def _current_learning_rate(optimizer):
    from kerasft.optimizers import innermost_optimizer

    inner = innermost_optimizer(optimizer)
    # Keras (3.15, `base_optimizer.py`) evaluates a schedule at `iterations` here.
    return float(keras.ops.convert_to_numpy(inner._get_current_learning_rate()))


def _write_csv(path, rows):
    columns = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v)
                             for k, v in row.items()})


def read_history(path: str | os.PathLike) -> list[dict]:
    """Reads `steps.csv` or `epochs.csv` back: a list of dicts of floats (ints for counters)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    converted = []
    for row in rows:
        converted.append({k: (int(v) if k in ("step", "epoch") else float(v)) if v != "" else None
                          for k, v in row.items()})
    return converted


class TrainingHistory(keras.callbacks.Callback):
    """Writes the run's history as CSV files, a PNG plot and TensorBoard logs.

    Args:
        directory: the folder to write into (created if missing).
        plot: whether to draw `history.png` (needs matplotlib).
        tensorboard: `"auto"` (when the `tensorboard` package is
            importable), True (error without it) or False.

    Attributes:
        steps, epochs: the rows written to `steps.csv` and `epochs.csv`.
    """

    def __init__(self, directory: str | os.PathLike, plot: bool = True,
                 tensorboard: bool | str = "auto"):
        super().__init__()
        if tensorboard not in ("auto", True, False):
            raise ValueError("`tensorboard` must be 'auto', True or False. "
                             f"Received: tensorboard={tensorboard!r}")
        available = importlib.util.find_spec("tensorboard") is not None
        if tensorboard is True and not available:
            raise ValueError("tensorboard=True needs the `tensorboard` package "
                             "(pip install tensorboard). Received: tensorboard=True")
        self.directory = pathlib.Path(directory)
        self.plot = plot
        self.steps, self.epochs = [], []
        self._tensorboard = None
        if tensorboard is True or (tensorboard == "auto" and available):
            self._tensorboard = keras.callbacks.TensorBoard(
                log_dir=str(self.directory / "tensorboard"), update_freq="batch",
                write_graph=False, profile_batch=0)
        self._epoch = 0
        self._previous = None

    def set_model(self, model):
        super().set_model(model)
        if self._tensorboard is not None:
            self._tensorboard.set_model(model)

    def on_train_begin(self, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.steps, self.epochs = [], []
        if self._tensorboard is not None:
            self._tensorboard.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._previous = None
        self._learning_rate = _current_learning_rate(self.model.optimizer)
        if self._tensorboard is not None:
            self._tensorboard.on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        # The rate the coming step uses (read before the step advances the schedule).
        self._learning_rate = _current_learning_rate(self.model.optimizer)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        loss = float(logs.get("loss", math.nan))
        count = batch + 1
        batch_loss = loss if self._previous is None else count * loss - batch * self._previous
        self._previous = loss
        self.steps.append({"step": len(self.steps) + 1, "epoch": self._epoch + 1,
                           "learning_rate": self._learning_rate, "loss": loss,
                           "batch_loss": batch_loss})
        if self._tensorboard is not None:
            self._tensorboard.on_train_batch_end(batch, {**logs, "learning_rate": self._learning_rate})

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "step": len(self.steps),
               "learning_rate": self.steps[-1]["learning_rate"] if self.steps else math.nan}
        for key, value in (logs or {}).items():
            if np.ndim(value) == 0:
                row[key] = float(value)
                if key.endswith("response_loss"):
                    row[key.replace("response_loss", "response_perplexity")] = math.exp(min(float(value), 700.0))
        self.epochs.append(row)
        self._write()
        if self._tensorboard is not None:
            self._tensorboard.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self._write()
        if self._tensorboard is not None:
            self._tensorboard.on_train_end(logs)

    def _write(self):
        _write_csv(self.directory / STEPS_FILE, self.steps)
        _write_csv(self.directory / EPOCHS_FILE, self.epochs)
        if self.plot:
            plot_history(self.steps, self.epochs, self.directory / PLOT_FILE)


def plot_history(steps: list[dict], epochs: list[dict], path: str | os.PathLike) -> pathlib.Path | None:
    """Draws loss per step and per epoch (training and validation) and the learning rate.

    Returns:
        The PNG's path, or None (with a warning) when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        from matplotlib import pyplot
    except ImportError:
        warnings.warn("matplotlib is not installed (the `plots` extra): the training history "
                      f"is in CSV only, no {PLOT_FILE}", stacklevel=2)
        return None
    figure, (loss_axis, epoch_axis, rate_axis) = pyplot.subplots(1, 3, figsize=(15, 4))
    step_numbers = [s["step"] for s in steps]
    loss_axis.plot(step_numbers, [s["batch_loss"] for s in steps], label="batch loss", alpha=0.5)
    loss_axis.plot(step_numbers, [s["loss"] for s in steps], label="running epoch mean")
    loss_axis.set(title="training loss per step", xlabel="step", ylabel="loss")
    epoch_numbers = [e["epoch"] for e in epochs]
    for key in sorted({k for e in epochs for k in e}):
        if key.endswith("loss"):
            epoch_axis.plot(epoch_numbers, [e.get(key, math.nan) for e in epochs], marker="o",
                            label=key)
    epoch_axis.set(title="loss per epoch", xlabel="epoch", ylabel="loss")
    rate_axis.plot(step_numbers, [s["learning_rate"] for s in steps])
    rate_axis.set(title="learning rate", xlabel="step", ylabel="learning rate")
    for axis in (loss_axis, epoch_axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    path = pathlib.Path(path)
    figure.savefig(path, dpi=80)
    pyplot.close(figure)
    return path
