"""Builds datasets/wordnet/{train,validation,test}.jsonl.gz from WordNet 3.0.

Needs the WordNet database files (Debian: `apt-get install -y wordnet-base`,
which puts them in /usr/share/wordnet). Run from the repository root:

    python scripts/build_wordnet_dataset.py [--wordnet-dir /usr/share/wordnet]

One record per headword:

    {"prompt": "Define the word X.", "response": <definition>,
     "word": X, "pos": "noun" | "verb" | "adjective" | "adverb"}

- Headwords: lemmas of index.{noun,verb,adj,adv} made only of letters,
  spaces (WordNet's "_"), hyphens and apostrophes. A lemma listed under
  several parts of speech is kept once, under the part of speech with the most
  sense-tagged senses (index field `tagsense_cnt`; ties: noun, verb,
  adjective, adverb).
- Definition: the gloss (after "|" in data.*) of the lemma's first listed
  sense, which WordNet orders by frequency, cut before the first quoted
  example sentence ('; "...').
- Spelling of X: as written in that synset (keeps capitals, e.g. "Aachen").
- Splits: test and validation hold `--eval-size` headwords each, drawn with
  `kerasft.data.train_validation_split(..., key=<lower-cased word>)`, so no
  headword is in two splits; train is a seeded sample of `--train-size` of the
  remaining headwords. All files are sorted by word.

The output is deterministic (fixed seed, gzip without timestamps).
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kerasft.data.loaders import write_jsonl  # noqa: E402
from kerasft.data.splits import train_validation_split  # noqa: E402

POS_FILES = {"noun": "noun", "verb": "verb", "adjective": "adj", "adverb": "adv"}
POS_PRIORITY = list(POS_FILES)
WORD_PATTERN = re.compile(r"^[a-z]([a-z' -]*[a-z])?$")
EXAMPLE_START = re.compile(r'\s*[;,:]\s*"')
ADJECTIVE_MARKER = re.compile(r"\((a|p|ip)\)$")


def read_index(path: Path) -> dict[str, tuple[int, str]]:
    """Maps lemma -> (tagsense_cnt, offset of the first sense)."""
    entries = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # License header.
                continue
            fields = line.split()
            lemma, p_cnt = fields[0], int(fields[3])
            rest = fields[4 + p_cnt :]
            tagsense_cnt, offsets = int(rest[1]), rest[2:]
            entries[lemma] = (tagsense_cnt, offsets[0])
    return entries


def read_data(path: Path) -> dict[str, tuple[list[str], str]]:
    """Maps synset offset -> (words, gloss)."""
    synsets = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition("|")
            fields = head.split()
            offset, word_count = fields[0], int(fields[3], 16)
            words = [ADJECTIVE_MARKER.sub("", w) for w in fields[4 : 4 + 2 * word_count : 2]]
            synsets[offset] = (words, gloss.strip())
    return synsets


def definition(gloss: str) -> str:
    """The gloss up to its first quoted example sentence.

    Examples follow the definition after ';' (and in a few glosses after ','
    or ':'), each in double quotes; quotes inside the definition are kept.
    """
    match = EXAMPLE_START.search(gloss)
    if match:
        gloss = gloss[: match.start()]
    return gloss.strip().rstrip(";,:").strip()


def build_records(wordnet_dir: Path) -> list[dict]:
    candidates = {}  # lemma -> (tagsense_cnt, -priority, pos, offset)
    for priority, pos in enumerate(POS_PRIORITY):
        for lemma, (tagged, offset) in read_index(wordnet_dir / f"index.{POS_FILES[pos]}").items():
            if not WORD_PATTERN.match(lemma.replace("_", " ")):
                continue
            candidate = (tagged, -priority, pos, offset)
            if lemma not in candidates or candidate[:2] > candidates[lemma][:2]:
                candidates[lemma] = candidate
    data = {pos: read_data(wordnet_dir / f"data.{POS_FILES[pos]}") for pos in POS_PRIORITY}
    records = []
    for lemma, (_, _, pos, offset) in candidates.items():
        words, gloss = data[pos][offset]
        text = definition(gloss)
        if not text:
            continue
        spelling = next((w for w in words if w.lower() == lemma), lemma)
        word = spelling.replace("_", " ")
        records.append(
            {"prompt": f"Define the word {word}.", "response": text, "word": word, "pos": pos}
        )
    records.sort(key=lambda r: (r["word"].lower(), r["word"]))
    return records


def license_text(wordnet_dir: Path) -> str:
    """The license header that WordNet puts at the top of every data file."""
    lines = []
    with open(wordnet_dir / "data.noun", encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            lines.append(re.sub(r"^\s+\d+\s?", "", line).rstrip())
    return "\n".join(lines).strip() + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--output-dir", type=Path, default=ROOT / "datasets" / "wordnet")
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    records = build_records(args.wordnet_dir)

    def headword(record):
        return record["word"].lower()

    rest, test = train_validation_split(
        records, args.eval_size / len(records), seed=args.seed, key=headword
    )
    rest, validation = train_validation_split(
        rest, args.eval_size / len(rest), seed=args.seed + 1, key=headword
    )
    keep = np.sort(np.random.default_rng(args.seed + 2).permutation(len(rest))[: args.train_size])
    train = [rest[i] for i in keep]

    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        write_jsonl(split, args.output_dir / f"{name}.jsonl.gz")
        print(f"{name}: {len(split)} records")
    (args.output_dir / "LICENSE").write_text(license_text(args.wordnet_dir))
    debian_copyright = Path("/usr/share/doc/wordnet-base/copyright")
    if not (args.output_dir / "LICENSE").read_text().strip() and debian_copyright.is_file():
        shutil.copy(debian_copyright, args.output_dir / "LICENSE")
    print(f"{len(records)} candidate headwords; wrote {args.output_dir}")


if __name__ == "__main__":
    main()
