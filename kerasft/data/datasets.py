"""Small real datasets shipped with kerasft (in the repository's `datasets/`).

- `load_wordnet(split)`: WordNet 3.0 definitions as (prompt, response)
  records, "Define the word X." -> gloss; splits share no headword.
- `load_shakespeare(split)`: whole plays as plain text, for continued
  pre-training; validation and test plays are held out from train.

The files are found in `$KERASFT_DATA` if set, otherwise in the `datasets/`
folder the wheel carries inside the package, or next to the `kerasft`
package in a source checkout (`kerasft.shipped`). Each dataset folder has a
LICENSE and a README describing how it was built (`scripts/build_*_dataset.py`).
"""

import os
from pathlib import Path

from kerasft.data.loaders import read_jsonl

SPLITS = ("train", "validation", "test")


def data_dir() -> Path:
    """The folder holding the shipped datasets.

    Returns:
        `Path($KERASFT_DATA)` if the environment variable is set, else the
        installed package's copy or `<repository>/datasets`.

    Raises:
        FileNotFoundError: If the folder does not exist.
    """
    configured = os.environ.get("KERASFT_DATA")
    if not configured:  # the wheel's copy, or the source checkout's (`kerasft.shipped`)
        from kerasft.shipped import shipped_dir

        return shipped_dir("datasets")
    path = Path(configured)
    if not path.is_dir():
        raise FileNotFoundError(
            "kerasft's shipped datasets were not found (they live in the source "
            "repository's `datasets/` folder; set KERASFT_DATA to point at a "
            f"copy). Received: data directory {str(path)!r}"
        )
    return path


def _split_file(dataset: str, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    path = data_dir() / dataset / f"{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"Missing shipped file {str(path)!r}; rebuild it with "
            f"scripts/build_{dataset}_dataset.py. Received: split={split!r}"
        )
    return path


def wordnet_path(split: str = "train") -> Path:
    """Path of a shipped WordNet split file (`.jsonl.gz`)."""
    return _split_file("wordnet", split)


def load_wordnet(split: str = "train") -> list[dict]:
    """WordNet 3.0 definition records.

    Each record is `{"prompt": "Define the word X.", "response": gloss,
    "word": X, "pos": "noun" | "verb" | "adjective" | "adverb"}` with the
    definition of the word's most frequent sense (example sentences removed).
    No word appears in two splits.

    Args:
        split: `"train"` (20,000 records), `"validation"` or `"test"` (500
            each).

    Returns:
        A list of dicts, usable directly with `instruction_batches`.
    """
    return read_jsonl(wordnet_path(split))


def load_shakespeare(split: str = "train", with_titles: bool = False) -> list:
    """Shakespeare plays (Globe edition text via Project Gutenberg).

    Args:
        split: `"train"` (12 plays), `"validation"` or `"test"` (one held-out
            play each).
        with_titles: Return `{"title", "text"}` dicts instead of strings.

    Returns:
        A list of play texts (or dicts), usable with `packed_text_batches`.
    """
    records = read_jsonl(_split_file("shakespeare", split))
    if with_titles:
        return records
    return [record["text"] for record in records]
