"""Validation while training: response loss as a metric or a callback, and early stopping on it.

Keras's `val_loss` is the mean of per-batch losses weighted by the number of
rows in each batch, so batches holding more response tokens do not count for
more: it equals `kerasft.evaluate.perplexity`'s loss only when every batch
has the same number of trained tokens. `ResponseLoss` is the token-weighted
mean NLL over all scored positions of all batches, exactly what
`evaluate.perplexity` reports (`exp(val_response_loss)` is the held-out
response perplexity); `TrainingHistory` writes that perplexity beside it.

Compiling a metric makes Keras compute full-vocabulary logits in training
(kerasft's default `recipe.compile` computes them only at weighted positions,
`kerasft.training_forward`). `ResponseValidation` instead runs
`evaluate.perplexity` (no full logits either) on the validation batches
after every epoch and adds `val_response_loss` / `val_response_perplexity`
to the epoch logs: the entry point uses it.
"""

import keras
from keras import ops

from kerasft.losses import causal_lm_metrics


class ResponseLoss(keras.metrics.Metric):
    """Mean next-token NLL over every position with a nonzero sample weight.

    `sum(sample_weight * nll) / sum(sample_weight)`, accumulated over all
    batches of an epoch (or an evaluation) in float32. Compile it as a
    weighted metric: `model.compile(..., weighted_metrics=[ResponseLoss()])`.
    """

    def __init__(self, name: str = "response_loss", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.weight = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                        name="weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
        nll = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True
        )
        weight = ops.ones_like(nll) if sample_weight is None else ops.cast(sample_weight, "float32")
        weight = ops.reshape(weight, ops.shape(nll))
        self.total.assign_add(ops.sum(nll * weight))
        self.weight.assign_add(ops.sum(weight))

    def result(self):
        return ops.divide_no_nan(self.total, self.weight)

    def reset_state(self):
        self.total.assign(0.0)
        self.weight.assign(0.0)


class ResponseValidation(keras.callbacks.Callback):
    """Adds `val_response_loss` and `val_response_perplexity` to every epoch's logs.

    The values are `kerasft.evaluate.perplexity(model, batches)`'s `loss` and
    `perplexity`. Put this callback before any that reads them
    (`early_stopping`, `TrainingHistory`): Keras hands one logs dict to the
    callbacks in order.

    Args:
        batches: `(x, y, sample_weight)` batches (a `SequenceBatches`).
    """

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def on_epoch_end(self, epoch, logs=None):
        from kerasft.evaluate.perplexity import perplexity

        scores = perplexity(self.model, self.batches, progress=False)
        if logs is not None:
            logs["val_response_loss"] = scores["loss"]
            logs["val_response_perplexity"] = scores["perplexity"]


def validation_metrics() -> list:
    """The compile-time weighted metrics of a run with validation: accuracy and `ResponseLoss`."""
    return [*causal_lm_metrics(), ResponseLoss()]


def early_stopping(patience: int = 2, monitor: str = "val_response_loss",
                   min_delta: float = 0.0) -> keras.callbacks.EarlyStopping:
    """Stops when the held-out response loss has not improved for `patience` epochs.

    The weights are not rolled back to the best epoch (Keras's
    `restore_best_weights` copies every weight of the model, the frozen base
    included, at each improvement).

    Raises:
        ValueError: for a `patience` that is not a positive integer.
    """
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"`patience` must be a positive integer. Received: patience={patience!r}")
    return keras.callbacks.EarlyStopping(monitor=monitor, patience=patience, min_delta=min_delta,
                                         mode="min", verbose=1)


class StopAfterSteps(keras.callbacks.Callback):
    """Ends `fit` after `steps` batches (a step budget, e.g. for a hyper-parameter search)."""

    def __init__(self, steps: int):
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"`steps` must be a positive integer. Received: steps={steps!r}")
        self.steps = steps
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.steps:
            self.model.stop_training = True
