"""Training batches for keras-hub causal LMs, as a `keras.utils.PyDataset`.

Every batch is the project-wide tuple `(x, y, sample_weight)` of numpy arrays:

- `x = {"token_ids": int32 [B, T], "padding_mask": bool [B, T]}`, plus
  `"segment_ids": int32 [B, T]` for packed rows (1, 2, ... for the examples
  or documents of a row, 0 for padding: see `kerasft.data.packing`);
- `y`: int32 [B, T], the next token at every position: `y[:, t]` is the
  token after `token_ids[:, t]` (so `y[:, :-1] == token_ids[:, 1:]`, and
  `y[:, -1]` is the token after the window, the pad id 0 when the sequence
  ended inside it);
- `sample_weight`: float32 [B, T], 1.0 where `y` is a token to train on
  (response tokens and EOS for instruction data, every real token for raw
  text), 0.0 elsewhere (prompt, padding).

This matches `keras_hub.models.Gemma3CausalLMPreprocessor`, which also packs
`T + 1` tokens and shifts, except that prompt tokens get weight 0.

Packed rows (`instruction_batches(pack=True)`, `packed_text_batches`) carry
`segment_ids` by default: a kerasft-compiled keras-hub causal LM
(`recipe.compile(model)`, `kerasft.training_forward`) and
`kerasft.evaluate.perplexity` then attend block-diagonally per document and
restart the rotary positions at each one, so a packed row trains and scores
exactly as its examples one per row (`kerasft.models.segments`).

Batches are served from numpy arrays held in memory through a
`keras.utils.PyDataset` rather than `tf.data` (on a 2-core machine Keras's
tf.data adapter was seen to sit idle ~60 s after the last batch of a `fit`).
"""

import copy
from typing import Any

import keras
import numpy as np

from kerasft.data.encoding import (
    encode_instruction_examples,
    special_token_ids,
    tokenize_texts,
)
from kerasft.data.loaders import get_field, load_records
from kerasft.data.packing import pack_examples, pack_token_stream, pad_examples


def _check_sequence_length(sequence_length):
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, (int, np.integer))
        or sequence_length < 1
    ):
        raise ValueError(
            "`sequence_length` must be a positive integer. Received: "
            f"sequence_length={sequence_length!r}"
        )


def _check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )


def rows_to_arrays(
    ids: np.ndarray,
    target_weights: np.ndarray,
    lengths: np.ndarray,
    segment_ids: np.ndarray | None = None,
):
    """Turns rows of `T + 1` tokens into `(x, y, sample_weight)` arrays.

    Args:
        ids: int [N, T + 1] token ids, padded.
        target_weights: float [N, T + 1], whether each token is a target.
        lengths: int [N], number of real tokens per row.
        segment_ids: None, or int [N, T + 1] document numbers of each token
            (as the packers return them with `return_segment_ids=True`).

    Returns:
        `(x, y, sample_weight)` with `x = {"token_ids", "padding_mask"}` (and
        `"segment_ids"`, the first `T` columns, when given), all `[N, T]`.

    Raises:
        ValueError: If `segment_ids` does not have the shape of `ids`.
    """
    ids = np.asarray(ids, dtype="int32")
    sequence_length = ids.shape[1] - 1
    padding_mask = np.arange(sequence_length)[None, :] < np.asarray(lengths)[:, None]
    x = {"token_ids": np.ascontiguousarray(ids[:, :-1]), "padding_mask": padding_mask}
    if segment_ids is not None:
        segment_ids = np.asarray(segment_ids)
        if segment_ids.shape != ids.shape or not np.issubdtype(segment_ids.dtype, np.integer):
            raise ValueError(
                "`segment_ids` must be an integer array of the shape of `ids`. Received: "
                f"segment_ids of shape {segment_ids.shape} and dtype {segment_ids.dtype}, "
                f"ids of shape {ids.shape}"
            )
        x["segment_ids"] = np.ascontiguousarray(segment_ids[:, :-1], dtype="int32")
    y = np.ascontiguousarray(ids[:, 1:])
    sample_weight = np.ascontiguousarray(np.asarray(target_weights, "float32")[:, 1:])
    return x, y, sample_weight


class SequenceBatches(keras.utils.PyDataset):
    """Fixed-length `(x, y, sample_weight)` batches from in-memory rows.

    Shuffling is deterministic: epoch `e` uses the permutation drawn from
    `numpy.random.default_rng([seed, e])`. The epoch counter starts at 0 and
    advances in `on_epoch_end()` (Keras calls it after every epoch of `fit`,
    and once before the first: a fresh object's first `fit` epoch follows
    permutation 1), or can be set with `set_epoch`.

    `len(batches)` is the number of batches per epoch. A keras-hub causal LM
    trains on them with `model.fit(batches)` (also `validation_data=batches`,
    `evaluate`, `predict`), preprocessor attached or not: the class attribute
    `kerasft_token_batches` makes kerasft hand them to Keras's own `fit`
    inside `kerasft.pretokenized(model)`, in this order, with Keras's
    batch-index shuffling off (keras-hub 0.32's `CausalLM.fit` override would
    otherwise try to preprocess them and fail on a PyDataset). A plain
    `keras.Model` taking the same inputs calls `model.fit(batches,
    shuffle=False)` (with `shuffle=True`, Keras's default, it also permutes
    the batch order with Python's global RNG).

    With `segment_ids`, every batch's `x` also holds `"segment_ids"` (packed
    rows: per-document attention and positions, see the module docstring).
    Consumers that would silently drop the key refuse such batches instead:
    `fit` / `evaluate` / `predict` on a keras-hub causal LM that was not
    compiled by a kerasft recipe (`kerasft.pretokenized`).

    Args:
        ids: int [N, T + 1] token ids (see `kerasft.data.packing`).
        target_weights: float [N, T + 1], whether each token is a target.
        lengths: int [N], real tokens per row.
        batch_size: Rows per batch.
        shuffle: Whether to shuffle rows (differently each epoch).
        seed: Shuffling seed.
        drop_remainder: Whether to drop the last batch if it is smaller than
            `batch_size`.
        segment_ids: None, or int [N, T + 1] document numbers per token (see
            `kerasft.data.packing`); batches then carry `x["segment_ids"]`.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of
            `keras.utils.PyDataset`.
    """

    # Read by `kerasft.pretokenized.is_token_batches`: token ids with their own
    # seeded order, to be fed to Keras's `fit` as they are.
    kerasft_token_batches = True

    def __init__(
        self,
        ids,
        target_weights,
        lengths,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = False,
        segment_ids=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_batch_size(batch_size)
        self._x, self._y, self._sample_weight = rows_to_arrays(
            ids, target_weights, lengths, segment_ids
        )
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_remainder = bool(drop_remainder)
        num_examples = len(self._y)
        if drop_remainder and num_examples < self.batch_size:
            raise ValueError(
                f"drop_remainder=True leaves no batch: {num_examples} examples "
                f"are fewer than batch_size={batch_size}."
            )
        self.epoch = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch):
        n = len(self._y)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    @property
    def sequence_length(self) -> int:
        """The model input length `T`."""
        return self._y.shape[1]

    @property
    def has_segment_ids(self) -> bool:
        """Whether the batches carry `x["segment_ids"]` (packed rows, per-document attention)."""
        return "segment_ids" in self._x

    @property
    def num_examples(self) -> int:
        """Number of rows (examples, or packed sequences)."""
        return len(self._y)

    @property
    def num_target_tokens(self) -> int:
        """Number of positions with sample weight 1 in one epoch."""
        return int(self._sample_weight[self._order[: len(self) * self.batch_size]].sum())

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch whose shuffling order the batches follow."""
        self.epoch = int(epoch)
        self._order = self._permutation(self.epoch)

    def on_epoch_end(self):
        """Advances to the next epoch's shuffling order."""
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        if self.drop_remainder:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(
                f"Batch index out of range for {len(self)} batches. Received: index={index}"
            )
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        x = {key: value[rows] for key, value in self._x.items()}
        return x, self._y[rows], self._sample_weight[rows]

    def select(self, rows) -> "SequenceBatches":
        """The same batching (size, shuffling, seed) over some of the rows.

        Args:
            rows: indices into the stored order (`as_arrays()`), e.g.
                `kerasft.data.sample_records(range(batches.num_examples), n, seed)`.

        Returns:
            A new `SequenceBatches` at epoch 0 holding those rows in that order.

        Raises:
            ValueError: If `rows` is empty or holds an index out of range.
        """
        rows = np.asarray(rows, dtype="int64").reshape(-1)
        if rows.size == 0 or rows.min() < -self.num_examples or rows.max() >= self.num_examples:
            raise ValueError(
                f"`rows` must be a non-empty list of indices below {self.num_examples}. "
                f"Received: rows={rows.tolist()[:10]!r}"
                + ("..." if rows.size > 10 else "")
            )
        if self.drop_remainder and rows.size < self.batch_size:
            raise ValueError(
                f"drop_remainder=True leaves no batch: {rows.size} rows are fewer than "
                f"batch_size={self.batch_size}. Received: rows of length {rows.size}"
            )
        subset = copy.copy(self)
        subset._x = {key: value[rows] for key, value in self._x.items()}
        subset._y = self._y[rows]
        subset._sample_weight = self._sample_weight[rows]
        subset.set_epoch(0)
        return subset

    def as_arrays(self):
        """All rows as one `(x, y, sample_weight)` tuple, in their stored order.

        The stored order is the input order (or packing order), unaffected by
        shuffling.
        """
        x = {key: value.copy() for key, value in self._x.items()}
        return x, self._y.copy(), self._sample_weight.copy()

    def rows(self):
        """The `(ids, target_weights, lengths, segment_ids)` rows behind the batches.

        The inverse of the constructor, in the stored order (see `as_arrays`):
        `SequenceBatches(*rows[:3], segment_ids=rows[3], ...)` serves the same
        batches. `ids` and `segment_ids` are `[N, T + 1]`; `target_weights[:, 0]`
        (never a label) is 0; `lengths` is at most `T` (the same padding
        mask); `segment_ids` is None without segment ids, and its last
        column, which no model input reads, repeats the column before it.
        """
        x = self._x
        ids = np.concatenate([x["token_ids"][:, :1], self._y], axis=1)
        weights = np.concatenate([np.zeros_like(self._sample_weight[:, :1]), self._sample_weight],
                                 axis=1)
        # `padding_mask = arange(T) < lengths`: its row sums give back the same
        # mask (a row of T + 1 real tokens reads as T, which masks the same).
        lengths = np.sum(x["padding_mask"], axis=1).astype("int32")
        segment_ids = None
        if self.has_segment_ids:
            last = np.where(x["padding_mask"][:, -1], x["segment_ids"][:, -1], 0)
            segment_ids = np.concatenate([x["segment_ids"], last[:, None]], axis=1)
        return ids, weights, lengths, segment_ids

    def __repr__(self):
        return (
            f"{type(self).__name__}(num_examples={self.num_examples}, "
            f"sequence_length={self.sequence_length}, batch_size={self.batch_size}, "
            f"num_batches={len(self)}, shuffle={self.shuffle}, seed={self.seed}"
            + (", segment_ids=True)" if self.has_segment_ids else ")")
        )


def instruction_batches(
    records: Any,
    tokenizer,
    template="gemma",
    sequence_length: int = 256,
    batch_size: int = 8,
    shuffle: bool = True,
    seed: int = 0,
    truncate: str = "error",
    pack: bool = False,
    drop_remainder: bool = False,
    prompt_key: str = "prompt",
    response_key: str = "response",
    split: str = "train",
    cross_attention: bool = False,
    **kwargs,
) -> SequenceBatches:
    """Batches of (prompt, response) records, with loss on the response only.

    Each example is `[BOS] + prompt tokens + response tokens + [EOS]` (the
    template decides the prompt and response text). Sample weights are 0 for
    prompt positions and padding, 1 where the label is a response token or
    EOS.

    Args:
        records: A list of dicts, a `.jsonl[.gz]`/`.csv[.gz]` path, a
            `tf.data.Dataset` of dicts, a TFDS builder or a registered TFDS
            name (see `kerasft.data.load_records`).
        tokenizer: A keras-hub tokenizer (e.g. `Gemma3Tokenizer`).
        template: `"gemma"`, `"instruction"` or a `PromptTemplate`.
        sequence_length: Model input length `T`; an example may hold up to
            `T + 1` tokens including BOS and EOS.
        batch_size: Rows per batch.
        shuffle: Shuffle rows, with a different permutation each epoch.
        seed: Shuffling seed (also orders examples before packing).
        truncate: `"error"` (default) raises on an example longer than
            `T + 1` tokens, naming the record; `"response"` truncates its
            response and drops its EOS.
        pack: Place several examples in one row (see
            `kerasft.data.packing.pack_examples`). The rows carry
            `segment_ids`, so each example attends only to itself and its
            positions start at 0: a packed row trains and scores exactly as
            its examples one per row (unless `cross_attention=True`).
        drop_remainder: Drop the last, smaller batch.
        prompt_key: Record field holding the prompt.
        response_key: Record field holding the response.
        split: Split to read when `records` is a TFDS source.
        cross_attention: With `pack=True`, leave the segment ids out: a
            token then attends to the earlier examples of its row and
            positions keep counting across them (loss masks stay exact).
            What kerasft did before segment ids, and what a model that reads
            only `token_ids` / `padding_mask` sees; only with `pack=True`.
        **kwargs: Passed to `keras.utils.PyDataset` (`workers`, ...).

    Returns:
        A `SequenceBatches` PyDataset yielding `(x, y, sample_weight)`.

    Raises:
        ValueError: For empty data, an unknown template or truncate mode, a
            sequence that does not fit, or `cross_attention=True` without
            `pack=True`.
        KeyError: If a record lacks `prompt_key` or `response_key`.
    """
    _check_sequence_length(sequence_length)
    _check_batch_size(batch_size)
    _check_flag("pack", pack)
    _check_flag("cross_attention", cross_attention)
    if cross_attention and not pack:
        raise ValueError("`cross_attention=True` applies to packed rows only (one example per "
                         "row attends only to itself). Received: cross_attention=True, pack=False")
    records = load_records(records, split=split)
    examples = encode_instruction_examples(
        records,
        tokenizer,
        template=template,
        sequence_length=sequence_length,
        truncate=truncate,
        prompt_key=prompt_key,
        response_key=response_key,
    )
    _, _, pad_id = special_token_ids(tokenizer)
    segment_ids = None
    if pack:
        if shuffle:
            order = np.random.default_rng([seed, 2**31 - 1]).permutation(len(examples))
            examples = [examples[i] for i in order]
        rows = pack_examples(examples, sequence_length, pad_id, return_segment_ids=True)
        *rows, segment_ids = rows
        if cross_attention:
            segment_ids = None
    else:
        rows = pad_examples(examples, sequence_length, pad_id)
    return SequenceBatches(
        *rows,
        segment_ids=segment_ids,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
        **kwargs,
    )


def instruction_arrays(records: Any, tokenizer, **kwargs):
    """All examples of `instruction_batches` as one `(x, y, sample_weight)`.

    Rows are in record order (packing order if `pack=True`).

    Args:
        records: As in `instruction_batches`.
        tokenizer: A keras-hub tokenizer.
        **kwargs: Any other `instruction_batches` argument.

    Returns:
        `(x, y, sample_weight)` numpy arrays with a leading dimension of the
        number of rows.
    """
    kwargs.setdefault("batch_size", 1)
    return instruction_batches(records, tokenizer, **kwargs).as_arrays()


def packed_text_batches(
    texts: Any,
    tokenizer,
    sequence_length: int = 256,
    batch_size: int = 8,
    shuffle: bool = True,
    seed: int = 0,
    remainder: str = "pad",
    drop_remainder: bool = False,
    add_bos: bool = True,
    add_eos: bool = True,
    text_key: str = "text",
    bos_per_row: bool = False,
    cross_attention: bool | None = None,
    **kwargs,
) -> SequenceBatches:
    """Batches of raw text for continued pre-training, packed into full rows.

    Each document becomes `[BOS] + tokens + [EOS]`; documents are
    concatenated in order and cut into consecutive, non-overlapping rows of
    `T + 1` tokens, so every token appears exactly once. Sample weight is 1
    for every real token. The last `len(stream) % (T + 1)` tokens form a
    final row padded with the pad id (`remainder="pad"`, padding weight 0) or
    are dropped (`remainder="drop"`). The first token of each row is an input
    only. A row may hold pieces of several documents; its `segment_ids`
    number them, so a token attends only to the earlier tokens of its own
    document, positions restart at each document, and a document's first
    token (nothing of its document before it) is no label (see
    `kerasft.data.packing.pack_token_stream`).

    Args:
        texts: A list of strings, or any `load_records` source of dicts with
            a `text_key` field.
        tokenizer: A keras-hub tokenizer.
        sequence_length: Model input length `T`.
        batch_size: Rows per batch.
        shuffle: Shuffle rows, differently each epoch.
        seed: Shuffling seed.
        remainder: `"pad"` or `"drop"` for the tokens that do not fill a row.
        drop_remainder: Drop the last, smaller batch.
        add_bos: Start each document with `tokenizer.start_token_id`.
        add_eos: End each document with `tokenizer.end_token_id`.
        text_key: Field holding the text when `texts` holds dicts.
        bos_per_row: Start every row with BOS, then `T` stream tokens, each a
            label once (see `pack_token_stream`'s `row_start_id`): how a
            model is scored on text it sees as a fresh sequence (the
            forgetting reference). Such rows carry no segment ids: each is
            read as one sequence, across the document boundaries in it.
        cross_attention: True leaves the segment ids out: a token then also
            attends to the previous documents of its row, positions keep
            counting across them, and every real token but a row's first is
            a label (BOS/EOS mark the boundaries). None (default): False,
            but True with `bos_per_row=True`, which cannot be combined with
            False.
        **kwargs: Passed to `keras.utils.PyDataset`.

    Returns:
        A `SequenceBatches` PyDataset yielding `(x, y, sample_weight)`.

    Raises:
        ValueError: For empty data, text too short for one row with
            `remainder="drop"`, or `bos_per_row=True` with
            `cross_attention=False`.
    """
    _check_sequence_length(sequence_length)
    _check_batch_size(batch_size)
    _check_flag("bos_per_row", bos_per_row)
    if cross_attention is None:
        cross_attention = bool(bos_per_row)
    _check_flag("cross_attention", cross_attention)
    if bos_per_row and not cross_attention:
        raise ValueError(
            "`bos_per_row=True` rows are each read as one sequence and carry no segment ids; "
            "leave `cross_attention` at None (or True). Received: bos_per_row=True, "
            "cross_attention=False"
        )
    if isinstance(texts, str):
        raise ValueError(
            "`texts` must be a list of documents, not a single string. "
            f"Received: texts={texts[:80]!r}..."
        )
    if isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts):
        documents = list(texts)
    else:
        records = load_records(texts)
        documents = [get_field(r, text_key, i) for i, r in enumerate(records)]
    if not documents:
        raise ValueError("No documents to pack. Received: texts with 0 elements")
    bos_id, eos_id, pad_id = special_token_ids(tokenizer)
    prefix = [bos_id] if add_bos else []
    suffix = [eos_id] if add_eos else []
    token_docs = [
        np.concatenate([prefix, ids, suffix]).astype("int32")
        for ids in tokenize_texts(tokenizer, documents, chunk_size=64)
    ]
    rows = pack_token_stream(token_docs, sequence_length, pad_id, remainder,
                             return_segment_ids=not cross_attention,
                             row_start_id=bos_id if bos_per_row else None)
    segment_ids = None if cross_attention else rows[3]
    return SequenceBatches(
        *rows[:3],
        segment_ids=segment_ids,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
        **kwargs,
    )
