"""Deterministic train/validation splits, optionally grouped by a key."""

from typing import Any, Callable, Hashable, Sequence

import numpy as np


def _group_keys(records, key):
    if key is None:
        return list(range(len(records)))
    if callable(key):
        return [key(record) for record in records]
    keys = []
    for index, record in enumerate(records):
        try:
            keys.append(record[key])
        except KeyError:
            raise KeyError(
                f"Record {index} has no key {key!r}; its keys are {sorted(record)}. "
                f"Received: key={key!r}"
            ) from None
    return keys


def train_validation_split(
    records: Sequence[Any],
    validation_fraction: float,
    seed: int = 0,
    key: str | Callable[[Any], Hashable] | None = None,
) -> tuple[list, list]:
    """Splits records into train and validation sets, deterministically.

    Without `key`, each record is placed on its own; with `key`, records that
    share a key value (e.g. the same headword) always land in the same split,
    so no key value appears in both. The groups are shuffled with `seed` and
    moved to validation until it holds at least
    `round(validation_fraction * len(records))` records (so with large groups
    it can hold slightly more). The result depends only on the records and
    the seed, not on the order of groups in the input; each split keeps the
    input order of its records.

    Args:
        records: A sequence of records (usually dicts).
        validation_fraction: Fraction of records for validation, in (0, 1).
        seed: Shuffling seed.
        key: `None`, the name of a record field, or a function of a record
            returning a hashable group key.

    Returns:
        `(train_records, validation_records)` lists.

    Raises:
        ValueError: If `validation_fraction` is not in (0, 1), or there are
            fewer than two records/groups to split.
        KeyError: If a record lacks the `key` field.
    """
    if not isinstance(validation_fraction, (int, float)) or not 0 < validation_fraction < 1:
        raise ValueError(
            "`validation_fraction` must be a number strictly between 0 and 1. "
            f"Received: validation_fraction={validation_fraction!r}"
        )
    records = list(records)
    group_of = _group_keys(records, key)
    groups = sorted(set(group_of), key=lambda g: (type(g).__name__, repr(g)))
    if len(groups) < 2:
        raise ValueError(
            f"Need at least two records (or two distinct `key` values) to split. "
            f"Received: {len(records)} records, {len(groups)} groups, key={key!r}"
        )
    sizes: dict = {}
    for g in group_of:
        sizes[g] = sizes.get(g, 0) + 1
    target = min(max(1, round(validation_fraction * len(records))), len(records) - 1)
    order = np.random.default_rng(seed).permutation(len(groups))
    validation_groups = set()
    count = 0
    for i in order:
        if count >= target or len(validation_groups) == len(groups) - 1:
            break
        validation_groups.add(groups[i])
        count += sizes[groups[i]]
    train = [r for r, g in zip(records, group_of) if g not in validation_groups]
    validation = [r for r, g in zip(records, group_of) if g in validation_groups]
    return train, validation


def sample_records(records: Sequence[Any], num_records: int | None, seed: int = 0) -> list:
    """A seeded uniform sample of `num_records` records, drawn without replacement.

    Shipped splits are often sorted (WordNet's are alphabetical), so
    `records[:n]` is not a sample of the split. The result is in random
    order, so any prefix of it (`sample[:k]`) is again a uniform sample.

    Args:
        records: A sequence of records (or any sequence).
        num_records: How many to draw; `None`, or a number at least
            `len(records)`, returns every record (shuffled).
        seed: Sampling seed; the result depends only on it and `records`.

    Returns:
        A list of `min(num_records, len(records))` records.

    Raises:
        ValueError: If `num_records` is not a non-negative integer or None.
    """
    records = list(records)
    if num_records is not None and (
        isinstance(num_records, bool)
        or not isinstance(num_records, (int, np.integer))
        or num_records < 0
    ):
        raise ValueError(
            "`num_records` must be a non-negative integer or None. "
            f"Received: num_records={num_records!r}"
        )
    count = len(records) if num_records is None else min(int(num_records), len(records))
    order = np.random.default_rng(seed).permutation(len(records))[:count]
    return [records[i] for i in order]
