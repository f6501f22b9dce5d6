"""Causal language-model loss and token-count normalisation of sample weights."""

import keras
import numpy as np


def causal_lm_loss(token_mean=True):
    """Next-token cross-entropy on logits, weighted by the loss mask.

    Args:
        token_mean: divide the weighted sum by the sum of the weights, i.e. the
            mean over trained tokens of the batch. With `False` the sum is
            divided by `batch * length`, which together with
            `TokenNormalizedBatches` gives the exact mean over all trained
            tokens of a gradient-accumulation step.
    """
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True,
        reduction="mean_with_sample_weight" if token_mean else "sum_over_batch_size",
    )


def causal_lm_metrics():
    """Next-token accuracy, weighted by the loss mask."""
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


class TokenNormalizedBatches(keras.utils.PyDataset):
    """Rescales sample weights so the loss is the mean over trained tokens.

    Keras's loss divides the weighted sum by `batch * length`, and gradient
    accumulation averages the micro-batch gradients. Both only give the true
    per-token mean when every micro-batch has the same number of trained
    tokens, which prompts and padding break (PITFALLS #9). This wrapper
    multiplies the weights of the `accumulation_steps` batches that make one
    optimizer step by `accumulation_steps * batch * length / tokens_in_step`,
    so the accumulated gradient equals the gradient of
    `sum(token losses) / tokens_in_step`.

    Args:
        batches: an indexable sequence of `(x, y, sample_weight)` batches (a
            `keras.utils.PyDataset` or a list).
        accumulation_steps: micro-batches per optimizer step.

    Like `SequenceBatches`, it goes straight into a keras-hub task's
    `model.fit(...)` (see `kerasft.pretokenized.is_token_batches`), with
    Keras's batch-index shuffling off so that the batches of one step stay
    consecutive.
    """

    # Read by `kerasft.pretokenized.is_token_batches`.
    kerasft_token_batches = True

    def __init__(self, batches, accumulation_steps=1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(
                "`accumulation_steps` must be an integer >= 1. Received: "
                f"accumulation_steps={accumulation_steps!r}"
            )
        self.batches = batches
        self.accumulation_steps = accumulation_steps
        self._window = None
        self._window_batches = None

    def __len__(self):
        return len(self.batches)

    @property
    def num_batches(self):
        return len(self.batches)

    def __getitem__(self, index):
        window = index // self.accumulation_steps
        if window != self._window:
            start = window * self.accumulation_steps
            stop = min(start + self.accumulation_steps, len(self.batches))
            self._window_batches = [self.batches[i] for i in range(start, stop)]
            self._window = window
        step_batches = self._window_batches
        tokens = sum(float(np.sum(b[2])) for b in step_batches)
        x, y, sample_weight = step_batches[index % self.accumulation_steps]
        sample_weight = np.asarray(sample_weight, dtype="float32")
        factor = self.accumulation_steps * sample_weight.size / max(tokens, 1.0)
        return x, y, sample_weight * np.float32(factor)

    def on_epoch_end(self):
        self._window = None
        self._window_batches = None
        if hasattr(self.batches, "on_epoch_end"):
            self.batches.on_epoch_end()
