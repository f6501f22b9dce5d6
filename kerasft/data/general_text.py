"""General text: the forgetting reference, its factual probes, and replay into training.

Fine-tuning on one task can make a model worse at what it knew before
(catastrophic forgetting). kerasft ships a small general set
(`datasets/general_text/`, see its README) that no task trains on:

- `load_general_text("reference")`: held-out text, only ever scored
  (`kerasft.evaluate.forgetting`);
- `load_general_text("replay")`: other text of the same kind, which
  `with_replay` mixes into training batches (the usual mitigation);
- `load_probes()`: short factual prompts with their answers, for greedy probes.
"""

import json

import numpy as np

from kerasft.data.batches import SequenceBatches, packed_text_batches
from kerasft.data.datasets import data_dir
from kerasft.data.loaders import read_jsonl

GENERAL_TEXT_SPLITS = ("reference", "replay")


def _file(name):
    path = data_dir() / "general_text" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"Missing shipped file {str(path)!r}; rebuild it with "
            "scripts/build_general_text_dataset.py"
        )
    return path


def load_general_text(split: str = "reference") -> list[str]:
    """The shipped general text, one document per record.

    Args:
        split: `"reference"` (scored by the forgetting check) or `"replay"`
            (mixed into training); they share no document.

    Returns:
        A list of strings.
    """
    if split not in GENERAL_TEXT_SPLITS:
        raise ValueError(f"`split` must be one of {GENERAL_TEXT_SPLITS}. Received: split={split!r}")
    return [record["text"] for record in read_jsonl(_file(f"{split}.jsonl.gz"))]


def load_probes() -> list[dict]:
    """Factual probes: `{"prompt": "The capital of France is", "answer": " Paris"}`."""
    return [json.loads(line) for line in _file("probes.jsonl").read_text().splitlines() if line]


def _segment_ids(rows):
    """The rows' segment ids, or one document per row (1 on real tokens) without them."""
    ids, _, lengths, segment_ids = rows
    if segment_ids is not None:
        return segment_ids
    # An unpacked row (or one packed with cross-attention) is read as one sequence.
    return (np.arange(ids.shape[1])[None, :] < np.asarray(lengths)[:, None]).astype("int32")


def with_replay(
    batches: SequenceBatches,
    tokenizer,
    fraction: float,
    texts: list[str] | None = None,
    seed: int = 0,
) -> SequenceBatches:
    """`batches` with packed rows of general text mixed in (replay).

    Every replay row is a full row of packed text with every real token
    trained on (but a document's first: see `packed_text_batches`), so the
    replay share of the trained tokens is usually higher than `fraction`,
    which counts rows. Replay rows carry segment ids (no attention across
    the documents of a row), and so do the task rows then (a task row
    without them is one sequence: segment 1 on its real tokens).

    Args:
        batches: the task's training batches.
        tokenizer: the model's keras-hub tokenizer.
        fraction: the share of rows that are general text, in `[0, 1)`: `n`
            task rows get `round(n * fraction / (1 - fraction))` replay rows.
        texts: the general text (default: `load_general_text("replay")`).
        seed: which replay rows are drawn.

    Returns:
        A new `SequenceBatches` with the same batch size, shuffling and seed,
        holding the task rows then the replay rows (shuffled together when
        `batches` shuffles). `fraction=0` returns `batches` itself.

    Raises:
        ValueError: for `fraction` outside `[0, 1)`, or too little general
            text for the replay rows asked for.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"`fraction` must be a number in [0, 1). Received: fraction={fraction!r}")
    if fraction == 0:
        return batches
    count = round(batches.num_examples * fraction / (1 - fraction))
    if count == 0:
        return batches
    general = packed_text_batches(
        texts if texts is not None else load_general_text("replay"), tokenizer,
        sequence_length=batches.sequence_length, batch_size=1, shuffle=False,
    )
    if general.num_examples < count:
        raise ValueError(
            f"The general text packs into {general.num_examples} rows of "
            f"{batches.sequence_length} tokens, fewer than the {count} replay rows asked for. "
            f"Received: fraction={fraction}, {batches.num_examples} task rows"
        )
    chosen = np.random.default_rng(seed).choice(general.num_examples, count, replace=False)
    task_rows, replay_rows = batches.rows(), general.select(np.sort(chosen)).rows()
    ids, weights, lengths = (np.concatenate([a, b]) for a, b in zip(task_rows[:3], replay_rows[:3]))
    segment_ids = None
    if task_rows[3] is not None or replay_rows[3] is not None:
        segment_ids = np.concatenate([_segment_ids(task_rows), _segment_ids(replay_rows)])
    return SequenceBatches(
        ids, weights, lengths, batch_size=batches.batch_size, shuffle=batches.shuffle,
        seed=batches.seed, drop_remainder=batches.drop_remainder, segment_ids=segment_ids,
    )
