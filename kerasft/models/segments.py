"""Packed rows without cross-talk: per-document attention and positions.

A packed row holds several documents (examples) one after another; its int
`segment_ids` number them 1, 2, ... (0 for padding). Run through
`packed_rows(model, segment_ids)`, a keras-hub Gemma / Gemma 3 model attends
block-diagonally causally (a token sees only the earlier tokens of its own
document; Gemma 3's sliding window then applies within it, since positions
inside one document differ as their indices do) and rotates queries and keys
at per-document positions `0, 1, ...`, so every token gets the logits it
would get with its document alone in a row.

The block's attention mask and the attention's RoPE are the two steps that
change. While the context is open, each decoder block's
`_compute_attention_mask` and each attention layer's `_apply_rope` (private
keras-hub 0.32 methods, mirrored here and nowhere else) are shadowed on the
instance by versions that read the packed mask and positions; calls with a
KV cache (generation) are left to upstream.
"""

import contextlib
import threading
from typing import Any, Iterator

from keras import ops

from kerasft.models import architecture

_ACTIVE = threading.local()

# The optional input keys of packed rows, as kerasft's packers make them.
SEGMENT_IDS = "segment_ids"
POSITIONS = "positions"
PACKED_KEYS = (SEGMENT_IDS, POSITIONS)


def split_packed(inputs: Any) -> tuple[Any, Any, Any]:
    """`(inputs without the packed-row keys, segment_ids, positions)`.

    Inputs without `segment_ids` come back as they are, with `None, None`.
    """
    if not isinstance(inputs, dict) or SEGMENT_IDS not in inputs:
        return inputs, None, None
    rest = {key: value for key, value in inputs.items() if key not in PACKED_KEYS}
    return rest, inputs[SEGMENT_IDS], inputs.get(POSITIONS)


def packed_rows_if_any(model: Any, segment_ids: Any, positions: Any = None):
    """`packed_rows(model, segment_ids, positions)`, or a no-op context when `segment_ids` is None."""
    if segment_ids is None:
        return contextlib.nullcontext()
    return packed_rows(model, segment_ids, positions)


def segment_positions(segment_ids: Any) -> Any:
    """Per-token positions that restart at 0 at the first token of each document.

    Args:
        segment_ids: int `(batch, sequence)`; equal neighbours share a document.

    Returns:
        int32 `(batch, sequence)` positions.
    """
    segment_ids = ops.cast(segment_ids, "int32")
    length = ops.shape(segment_ids)[1]
    index = ops.broadcast_to(ops.arange(length, dtype="int32")[None, :], ops.shape(segment_ids))
    starts = ops.concatenate(
        [
            ops.ones_like(segment_ids[:, :1], dtype="bool"),
            ops.not_equal(segment_ids[:, 1:], segment_ids[:, :-1]),
        ],
        axis=1,
    )
    # The index of each token's document start: a running max of start indices.
    start_index = _running_max(ops.where(starts, index, 0))
    return index - start_index


def _running_max(values):
    """Cumulative max along axis 1 of non-negative, non-decreasing-where-set values."""
    # Start indices only increase along a row, so the running max of the
    # starts (0 elsewhere) equals a cumulative max; keras.ops has no cummax,
    # so take the last start at or before each position via a masked max.
    length = ops.shape(values)[1]
    upper = ops.tril(ops.ones((length, length), dtype="int32"))  # [i, j] = j <= i
    return ops.max(values[:, None, :] * upper[None, :, :], axis=-1)


def packed_attention_mask(segment_ids: Any, padding_mask: Any = None) -> Any:
    """`(batch, sequence, sequence)` bool: causal, same document, real key."""
    segment_ids = ops.cast(segment_ids, "int32")
    length = ops.shape(segment_ids)[1]
    causal = ops.tril(ops.ones((length, length), dtype="bool"))[None]
    same = ops.equal(segment_ids[:, :, None], segment_ids[:, None, :])
    mask = ops.logical_and(causal, same)
    if padding_mask is not None:
        mask = ops.logical_and(mask, ops.cast(padding_mask, "bool")[:, None, :])
    return mask


@contextlib.contextmanager
def packed_rows(model: Any, segment_ids: Any, positions: Any = None) -> Iterator[None]:
    """Runs `model`'s decoder blocks per document of packed rows inside the block.

    Args:
        model: a keras-hub Gemma / Gemma 3 causal LM or backbone.
        segment_ids: int `(batch, sequence)` document numbers (see module).
        positions: int `(batch, sequence)` RoPE positions; default
            `segment_positions(segment_ids)`.
    """
    if positions is None:
        positions = segment_positions(segment_ids)
    state = {"segment_ids": segment_ids, "positions": positions}
    shadowed = []
    for block in architecture.decoder_blocks(model):
        attention = block.attention
        # An adapter wrapper (prefix tuning) holds the keras-hub layer as `.layer`.
        attention = getattr(attention, "layer", attention)
        shadowed.append((block, "_compute_attention_mask", _packed_mask(block, state)))
        shadowed.append((attention, "_apply_rope", _packed_rope(attention, state)))
    previous = getattr(_ACTIVE, "state", None)
    _ACTIVE.state = state
    try:
        for layer, name, function in shadowed:
            object.__setattr__(layer, name, function)
        yield
    finally:
        for layer, name, _ in shadowed:
            layer.__dict__.pop(name, None)
        _ACTIVE.state = previous


def _is_packed_row(x, state):
    # Other sequences through the same blocks while the context is open (a
    # soft prompt's virtual tokens) keep upstream's mask and positions.
    return tuple(ops.shape(x)[:2]) == tuple(ops.shape(state["segment_ids"]))


def _packed_mask(block, state):
    original = type(block)._compute_attention_mask.__get__(block)

    def compute_attention_mask(x, padding_mask, *args, **kwargs):
        # keras-hub 0.32: Gemma passes (cache, cache_update_index), Gemma 3
        # (vision_mask, cache, cache_update_index); a cache means generation.
        names = ("vision_mask", "cache", "cache_update_index") if len(args) == 3 else (
            "cache", "cache_update_index")
        bound = dict(zip(names, args), **kwargs)
        if bound.get("cache") is not None or not _is_packed_row(x, state):
            return original(x, padding_mask, *args, **kwargs)
        return packed_attention_mask(state["segment_ids"], padding_mask)

    return compute_attention_mask


def _packed_rope(attention, state):
    def apply_rope(x, start_index, *args, **kwargs):
        if not _is_packed_row(x, state):
            return type(attention)._apply_rope(attention, x, start_index, *args, **kwargs)
        positions = ops.cast(state["positions"], "float32")
        if type(attention).__name__ == "CachedGemmaAttention":
            # Gemma's own `_apply_rope` takes positions and keeps its layout swap.
            return type(attention)._apply_rope(attention, x, start_index, positions=positions)
        return attention.rope_layer(x, positions=positions)

    return apply_rope
