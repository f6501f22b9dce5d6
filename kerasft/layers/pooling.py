"""Pooling of a sequence of hidden states into one vector per example."""

import keras
from keras import ops

POOLING_MODES = ("last_token", "mean")


@keras.saving.register_keras_serializable(package="kerasft")
class SequencePooling(keras.layers.Layer):
    """Pools `[batch, sequence, hidden]` states to `[batch, hidden]` under a padding mask.

    - `"last_token"`: the state at the last non-padding position of each row
      (the position with the highest index whose mask is true), so it works
      with right or left padding. For a causal model this is the only
      position that has seen the whole text.
    - `"mean"`: the mean of the states at non-padding positions.

    Pooling is computed in float32 whatever the input dtype. A row with no
    non-padding position pools to the state at position 0 (`"last_token"`) or
    to zeros (`"mean"`).

    Args:
        mode: `"last_token"` or `"mean"`.

    Call arguments:
        hidden_states: `[batch, sequence, hidden]` tensor.
        padding_mask: `[batch, sequence]` tensor, true (or 1) at real tokens.
    """

    def __init__(self, mode="last_token", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(
                f"`pooling` must be one of {POOLING_MODES}. Received: pooling={mode!r}"
            )
        self.mode = mode

    def call(self, hidden_states, padding_mask):
        hidden_states = ops.cast(hidden_states, "float32")
        mask = ops.cast(padding_mask, "float32")
        if self.mode == "mean":
            total = ops.sum(hidden_states * mask[:, :, None], axis=1)
            count = ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)
            return total / count
        positions = ops.arange(ops.shape(mask)[1], dtype="int32")
        last = ops.max(positions[None, :] * ops.cast(mask, "int32"), axis=1)
        shape = ops.shape(hidden_states)
        index = ops.broadcast_to(last[:, None, None], (shape[0], 1, shape[2]))
        return ops.take_along_axis(hidden_states, index, axis=1)[:, 0, :]

    def compute_output_shape(self, hidden_states_shape, padding_mask_shape=None):
        return (hidden_states_shape[0], hidden_states_shape[2])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
