"""Progress bars and batch iteration shared by the evaluation loops."""

import contextlib

import keras


def iterate_batches(batches):
    """Returns `(iterator, number_of_batches_or_None)` for a dataset.

    A `keras.utils.PyDataset` is read by index (iterating one directly relies
    on `IndexError` at the end, which not every `PyDataset` raises); anything
    else is iterated as given.
    """
    if isinstance(batches, keras.utils.PyDataset):
        num_batches = batches.num_batches
        if num_batches is None:
            raise ValueError(
                "`batches` is a `PyDataset` without a finite `num_batches`; "
                "an infinite dataset cannot be evaluated. Received: "
                f"batches={batches!r} with num_batches=None"
            )
        return (batches[i] for i in range(num_batches)), num_batches
    try:
        total = len(batches)
    except TypeError:
        total = None
    return iter(batches), total


class Progress:
    """A `keras.utils.Progbar` that can be switched off.

    Args:
        target: Number of steps, or `None` when unknown.
        enabled: Whether to draw the bar.
        unit_name: Name of one step, shown by the bar.
        values: Names of the values passed to `update`; they are shown as
            given (running totals), not averaged over steps by the bar.
    """

    def __init__(self, target, enabled=True, unit_name="step", values=()):
        self._bar = None
        self._target = target
        if enabled:
            self._bar = keras.utils.Progbar(
                target, unit_name=unit_name, stateful_metrics=list(values)
            )
        self._seen = 0

    def update(self, steps=1, values=None):
        """Advances the bar by `steps` and shows `values` (name, value) pairs."""
        self._seen += steps
        if self._bar is not None:
            self._bar.update(self._seen, values=values)

    def finish(self, values=None):
        """Draws the final state of the bar when `update` has not yet."""
        if self._bar is not None and self._seen != self._target:
            self._bar.update(self._seen, values=values, finalize=True)


def no_grad():
    """A context in which the torch backend records no autograd graph.

    Evaluation never needs gradients; on torch, skipping the graph keeps the
    activations of every layer from being held alive until the loss is freed.
    """
    if keras.config.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
