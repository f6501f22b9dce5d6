"""Packing token sequences into fixed-length rows.

A *row* holds `sequence_length + 1` token ids: the model reads its first
`sequence_length` tokens and is trained to predict its last `sequence_length`.
Rows are returned as three arrays: `ids` [N, T + 1] (int32, padded with the
pad id), `target_weights` [N, T + 1] (float32, whether each token is a
training target) and `lengths` [N] (number of real tokens in the row).

Two packers:

- `pack_token_stream` (raw text, continued pre-training): documents are
  concatenated into one stream and cut into consecutive rows, so every token
  lands in exactly one row.
- `pack_examples` (instruction data, `pack=True`): whole examples are placed
  into rows (best fit), never split, with their loss masks kept.

With `return_segment_ids=True` each packer also returns `segment_ids`
[N, T + 1] (int32): 1, 2, ... for the examples or documents of a row in
order, 0 for padding. Fed to the model as `x["segment_ids"]` (the first `T`
columns), they make attention block-diagonal per example and restart the
rotary positions at each example (`kerasft.models.segments`, through
`kerasft.training_forward`), so a packed row trains exactly as its examples
one per row. Without them, keras-hub's plain causal mask spans the whole row:
a token then attends to the earlier examples of its row and positions keep
counting across boundaries (loss masks stay exact either way).
`kerasft.data.instruction_batches(pack=True)` and `packed_text_batches` ask
for them by default and put them in every batch (`cross_attention=True`
leaves them out).
"""

import bisect
from typing import Sequence

import numpy as np

REMAINDER_MODES = ("pad", "drop")


def pad_examples(
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    sequence_length: int,
    pad_id: int = 0,
    return_segment_ids: bool = False,
):
    """Places one example per row, padded at the end.

    Args:
        examples: `(ids, target_weights)` pairs of at most
            `sequence_length + 1` tokens each.
        sequence_length: The model input length `T`.
        pad_id: Token id used for padding.
        return_segment_ids: also return `segment_ids` (see module docstring).

    Returns:
        `(ids, target_weights, lengths)` arrays (see module docstring), and
        `segment_ids` last with `return_segment_ids=True`.
    """
    rows = [[i] for i in range(len(examples))]
    return _fill_rows(rows, examples, sequence_length, pad_id, return_segment_ids)


def _fill_rows(rows, examples, sequence_length, pad_id, return_segment_ids=False):
    width = sequence_length + 1
    ids = np.full((len(rows), width), pad_id, dtype="int32")
    weights = np.zeros((len(rows), width), dtype="float32")
    lengths = np.zeros((len(rows),), dtype="int32")
    segment_ids = np.zeros((len(rows), width), dtype="int32")
    for row, members in enumerate(rows):
        position = 0
        for segment, member in enumerate(members, start=1):
            example_ids, example_weights = examples[member]
            end = position + len(example_ids)
            if end > width:
                raise ValueError(
                    f"Example {member} has {len(example_ids)} tokens, more than "
                    f"sequence_length + 1 = {width}. Received: sequence_length={sequence_length}"
                )
            ids[row, position:end] = example_ids
            weights[row, position:end] = example_weights
            segment_ids[row, position:end] = segment
            position = end
        lengths[row] = position
    if return_segment_ids:
        return ids, weights, lengths, segment_ids
    return ids, weights, lengths


def pack_examples(
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    sequence_length: int,
    pad_id: int = 0,
    return_segment_ids: bool = False,
):
    """Packs several examples per row (best fit, examples never split).

    Each example goes to the open row with the least free space that still
    holds it, or to a new row. Within a row, examples keep their input order.
    The result is deterministic for a given input order.

    Args:
        examples: `(ids, target_weights)` pairs of at most
            `sequence_length + 1` tokens each.
        sequence_length: The model input length `T`.
        pad_id: Token id used for padding the end of each row.
        return_segment_ids: also return `segment_ids` (see module docstring).

    Returns:
        `(ids, target_weights, lengths)` arrays (see module docstring), and
        `segment_ids` last with `return_segment_ids=True`.
    """
    width = sequence_length + 1
    rows: list[list[int]] = []
    # Sorted (free_space, row) pairs of rows that still have room.
    free: list[tuple[int, int]] = []
    for index, (example_ids, _) in enumerate(examples):
        size = len(example_ids)
        if size > width:
            raise ValueError(
                f"Example {index} has {size} tokens, more than sequence_length + 1 "
                f"= {width}. Received: sequence_length={sequence_length}"
            )
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            space, row = free.pop(slot)
            rows[row].append(index)
            space -= size
        else:
            row = len(rows)
            rows.append([index])
            space = width - size
        if space > 0:
            bisect.insort(free, (space, row))
    return _fill_rows(rows, examples, sequence_length, pad_id, return_segment_ids)


def pack_token_stream(
    documents: Sequence[np.ndarray],
    sequence_length: int,
    pad_id: int = 0,
    remainder: str = "pad",
    return_segment_ids: bool = False,
    row_start_id: int | None = None,
):
    """Concatenates documents and cuts the stream into rows of `T + 1` tokens.

    Rows do not overlap: concatenating all rows (without their padding) gives
    back the stream, so every token appears exactly once. The first token of
    each row is only an input, never a label. With `row_start_id` (e.g. BOS)
    every row is that token followed by the next `T` stream tokens, so every
    stream token is a label exactly once and every row starts as a sequence
    the model was trained on does (Gemma predicts poorly without a leading
    BOS: on the 270M, the shipped general text's rows without it score a
    perplexity of 244).

    Args:
        documents: 1-D int arrays, e.g. `[BOS] + tokens + [EOS]` per document.
        sequence_length: The model input length `T`.
        pad_id: Token id for padding the last row.
        remainder: What to do with the last `len(stream) % (T + 1)` tokens:
            `"pad"` keeps them in a final row padded with `pad_id` (padding has
            target weight 0); `"drop"` discards them.
        return_segment_ids: also return `segment_ids`: each row numbers the
            pieces of documents it holds 1, 2, ...; the first token of a
            document then gets target weight 0, since with per-document
            attention nothing before it in its own document predicts it.
        row_start_id: a token put before the `T` stream tokens of every row
            (see above); a stream token equal to it right after it (a
            document's own BOS at a row start) gets target weight 0.

    Returns:
        `(ids, target_weights, lengths)` arrays; target weight is 1 for every
        real token (but see `return_segment_ids`); and `segment_ids` last with
        `return_segment_ids=True`.

    Raises:
        ValueError: If `remainder` is unknown, or no row can be formed.
    """
    if remainder not in REMAINDER_MODES:
        raise ValueError(
            f"`remainder` must be one of {REMAINDER_MODES}. Received: remainder={remainder!r}"
        )
    width = sequence_length + 1
    pieces = [np.asarray(d, dtype="int32").reshape(-1) for d in documents]
    stream = np.concatenate(pieces) if pieces else np.zeros((0,), "int32")
    if row_start_id is not None:
        if return_segment_ids:
            raise ValueError("`row_start_id` and `return_segment_ids` cannot be combined. "
                             f"Received: row_start_id={row_start_id!r}, return_segment_ids=True")
        return _rows_with_start(stream, sequence_length, pad_id, remainder, int(row_start_id))
    # The document index of every stream token.
    owner = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces]).astype("int32")
    num_full, leftover = divmod(len(stream), width)
    if remainder == "drop" or leftover == 0:
        num_rows, leftover = num_full, 0
    else:
        num_rows = num_full + 1
    if num_rows == 0:
        raise ValueError(
            f"The text has {len(stream)} tokens, fewer than one row of "
            f"sequence_length + 1 = {width} tokens, and remainder='drop'. "
            f"Received: sequence_length={sequence_length}"
        )
    ids = np.full((num_rows * width,), pad_id, dtype="int32")
    used = num_full * width + leftover
    ids[:used] = stream[:used]
    weights = np.zeros((num_rows * width,), dtype="float32")
    weights[:used] = 1.0
    lengths = np.full((num_rows,), width, dtype="int32")
    if leftover:
        lengths[-1] = leftover
    ids, weights = ids.reshape(num_rows, width), weights.reshape(num_rows, width)
    if not return_segment_ids:
        return ids, weights, lengths
    owners = np.full((num_rows * width,), -1, dtype="int32")
    owners[:used] = owner[:used]
    owners = owners.reshape(num_rows, width)
    starts = np.ones_like(owners, dtype=bool)
    starts[:, 1:] = owners[:, 1:] != owners[:, :-1]
    segment_ids = np.where(owners >= 0, np.cumsum(starts & (owners >= 0), axis=1), 0)
    # A document's first token (not a row's continuation of one) is no target.
    first = np.zeros((num_rows * width,), dtype=bool)
    starts_of_documents = np.cumsum([0] + [len(p) for p in pieces[:-1]]).astype("int64")
    first[starts_of_documents[starts_of_documents < used]] = True
    weights = np.where(first.reshape(num_rows, width), 0.0, weights).astype("float32")
    return ids, weights, lengths, segment_ids.astype("int32")


def _rows_with_start(stream, sequence_length, pad_id, remainder, start_id):
    """`pack_token_stream` rows of `[start_id] + T` consecutive stream tokens."""
    num_full, leftover = divmod(len(stream), sequence_length)
    if remainder == "drop":
        leftover = 0
    num_rows = num_full + (1 if leftover else 0)
    if num_rows == 0:
        raise ValueError(
            f"The text has {len(stream)} tokens, fewer than one row of "
            f"sequence_length = {sequence_length} tokens, and remainder='drop'. "
            f"Received: sequence_length={sequence_length}"
        )
    width = sequence_length + 1
    used = num_full * sequence_length + leftover
    body = np.full((num_rows * sequence_length,), pad_id, dtype="int32")
    body[:used] = stream[:used]
    body = body.reshape(num_rows, sequence_length)
    ids = np.concatenate([np.full((num_rows, 1), start_id, "int32"), body], axis=1)
    weights = np.zeros((num_rows, width), dtype="float32")
    real = np.zeros((num_rows * sequence_length,), dtype="float32")
    real[:used] = 1.0
    weights[:, 1:] = real.reshape(num_rows, sequence_length)
    weights[:, 1] = np.where(ids[:, 1] == start_id, 0.0, weights[:, 1])
    lengths = np.full((num_rows,), width, dtype="int32")
    if leftover:
        lengths[-1] = leftover + 1
    return ids, weights, lengths
