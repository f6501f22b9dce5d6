"""Preference pairs `{"prompt", "chosen", "rejected"}` as training batches.

Each pair becomes two rows of the project-wide `(x, y, sample_weight)` tuple
(see `kerasft.data.batches`): `[BOS] + prompt + chosen + [EOS]` and
`[BOS] + prompt + rejected + [EOS]`, with sample weight 1 on the response
tokens (and EOS) only, so that a sequence log-probability summed under the
weights is the log-probability of the response given the prompt.

A batch of `B` pairs holds `2 * B` rows: the `B` chosen responses first, then
the `B` rejected ones in the same order (row `i` and row `B + i` share their
prompt). DPO, SimPO and the reward model read pairs back with
`split_pairs`. Shuffling permutes pairs, never splits them.
"""

from typing import Any

import keras
import numpy as np

from kerasft.data.batches import _check_batch_size, _check_sequence_length, rows_to_arrays
from kerasft.data.encoding import encode_instruction_examples, special_token_ids
from kerasft.data.loaders import load_records
from kerasft.data.packing import pad_examples

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")


def split_pairs(values):
    """`(chosen, rejected)` halves of a `[2 * B, ...]` tensor laid out as `PreferenceBatches`."""
    half = keras.ops.shape(values)[0] // 2
    return values[:half], values[half:]


class PreferenceBatches(keras.utils.PyDataset):
    """`(x, y, sample_weight)` batches of `2 * B` rows: `B` chosen, then their `B` rejected.

    Epoch `e` orders the pairs with `numpy.random.default_rng([seed, e])`
    (as `SequenceBatches`); the epoch advances in `on_epoch_end`.

    Args:
        chosen: `(x, y, sample_weight)` arrays of the chosen rows.
        rejected: the same for the rejected rows, row `i` pairing with
            `chosen` row `i`.
        batch_size: pairs per batch.
        shuffle: shuffle the pairs, differently each epoch.
        seed: shuffling seed.
        **kwargs: `keras.utils.PyDataset` arguments.
    """

    def __init__(self, chosen, rejected, batch_size: int, shuffle: bool = True, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        _check_batch_size(batch_size)
        self._chosen, self._rejected = chosen, rejected
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.set_epoch(0)

    @property
    def num_pairs(self) -> int:
        return len(self._chosen[1])

    @property
    def sequence_length(self) -> int:
        return self._chosen[1].shape[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.num_pairs)
                       if self.shuffle else np.arange(self.num_pairs))

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        return -(-self.num_pairs // self.batch_size)

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(
                f"Batch index out of range for {len(self)} batches. Received: index={index}"
            )
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        return _concatenate(_take(self._chosen, rows), _take(self._rejected, rows))

    def as_arrays(self):
        """All pairs as one `(x, y, sample_weight)` of `2 * num_pairs` rows, in record order."""
        return _concatenate(self._chosen, self._rejected)

    def __repr__(self):
        return (f"{type(self).__name__}(num_pairs={self.num_pairs}, sequence_length="
                f"{self.sequence_length}, batch_size={self.batch_size}, shuffle={self.shuffle})")


def _take(arrays, rows):
    x, y, weights = arrays
    return {k: v[rows] for k, v in x.items()}, y[rows], weights[rows]


def _concatenate(first, second):
    x = {k: np.concatenate([first[0][k], second[0][k]]) for k in first[0]}
    return x, np.concatenate([first[1], second[1]]), np.concatenate([first[2], second[2]])


def preference_batches(
    records: Any,
    tokenizer,
    template="gemma",
    sequence_length: int = 128,
    batch_size: int = 4,
    shuffle: bool = True,
    seed: int = 0,
    truncate: str = "response",
    **kwargs,
) -> PreferenceBatches:
    """Batches of preference pairs with loss weights on the response tokens only.

    Args:
        records: dicts with `"prompt"`, `"chosen"` and `"rejected"` strings,
            or any `kerasft.data.load_records` source of them.
        tokenizer: a keras-hub tokenizer.
        template: `"gemma"`, `"instruction"` or a `PromptTemplate`; the
            prompt and each response are rendered as in `instruction_batches`.
        sequence_length: model input length `T`.
        batch_size: pairs per batch (each batch holds `2 * batch_size` rows).
        shuffle: shuffle pairs, differently each epoch.
        seed: shuffling seed.
        truncate: `"response"` (default) cuts a response that does not fit
            (and drops its EOS); `"error"` raises naming the record.
        **kwargs: `keras.utils.PyDataset` arguments.

    Returns:
        A `PreferenceBatches`.

    Raises:
        ValueError: for no records or a bad length.
        KeyError: for a record without one of the three keys (naming it).
    """
    _check_sequence_length(sequence_length)
    _check_batch_size(batch_size)
    records = load_records(records)
    if len(records) == 0:
        raise ValueError("No preference records. Received: records with 0 elements")
    for index, record in enumerate(records):
        missing = [key for key in PREFERENCE_KEYS if key not in record]
        if missing:
            raise KeyError(
                f"Preference record {index} lacks {missing}; each needs {list(PREFERENCE_KEYS)}. "
                f"Received: keys {sorted(record)}"
            )
    _, _, pad_id = special_token_ids(tokenizer)
    halves = []
    for key in ("chosen", "rejected"):
        examples = encode_instruction_examples(
            records, tokenizer, template=template, sequence_length=sequence_length,
            truncate=truncate, response_key=key,
        )
        halves.append(rows_to_arrays(*pad_examples(examples, sequence_length, pad_id)))
    return PreferenceBatches(*halves, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)


def load_wordnet_preference(split: str = "train") -> list[dict]:
    """The shipped WordNet preference pairs (`scripts/build_preference_dataset.py`).

    `{"prompt": "Define the word X.", "chosen": X's gloss, "rejected": the
    gloss of another word of the same split and part of speech, "word",
    "pos"}`; train 4,000 pairs, validation and test 500 each, no headword in
    two splits.
    """
    from kerasft.data.datasets import _split_file
    from kerasft.data.loaders import read_jsonl

    return read_jsonl(_split_file("wordnet_preference", split))


def load_wordnet_pos(split: str = "train") -> list[dict]:
    """The shipped GRPO prompts: name the part of speech of a WordNet headword.

    `{"prompt", "word", "pos"}`; the prompt is a few-shot completion (use the
    `"plain"` template) ending in `"<word>:"`; score completions with
    `part_of_speech_reward`. Balanced over parts of speech: train 500 words
    of each; validation 13 and test 18 held-out words of each.
    """
    from kerasft.data.datasets import _split_file
    from kerasft.data.loaders import read_jsonl

    return read_jsonl(_split_file("wordnet_pos", split))


POS_ANSWERS = ("noun", "verb", "adjective", "adverb")


def part_of_speech_reward(records, completions) -> list[float]:
    """1.0 where a completion's first word (letters only, any case) is the record's `pos`, else 0.0."""
    import re

    rewards = []
    for record, completion in zip(records, completions):
        words = re.findall(r"[a-z]+", str(completion).lower())
        rewards.append(float(bool(words) and words[0] == record["pos"]))
    return rewards
