"""Builds the shipped preference and GRPO prompt sets from the shipped WordNet splits.

Run from the repository root (offline; reads only datasets/wordnet/):

    python scripts/build_preference_dataset.py

- datasets/wordnet_preference/{train,validation,test}.jsonl.gz: one pair per
  headword of the same WordNet split,
  `{"prompt": "Define the word X.", "chosen": X's own gloss, "rejected": the
  gloss of another headword of the same split and part of speech, "word",
  "pos"}`. The other headword is drawn with a seeded generator; splits share
  no headword (they are WordNet's, split by headword), and a rejected gloss
  comes from the same split, so no held-out gloss is seen in training.
- datasets/wordnet_pos/{train,validation,test}.jsonl.gz: verifiable prompts
  for GRPO, `{"prompt": a few-shot completion prompt ending "X:", "word",
  "pos"}` (template "plain"), scored by `kerasft.data.part_of_speech_reward`.

Sizes: train 4,000 of the 20,000 WordNet train headwords (seeded sample),
validation and test all 500 each; the GRPO prompts are balanced over parts of speech:
500 each from the WordNet train split, and in the held-out splits as many of each as
the rarest has (validation 13, test 18). Deterministic (seed 1234, gzip without
timestamps).
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kerasft.data.loaders import read_jsonl, write_jsonl  # noqa: E402

# A few-shot completion prompt (template "plain"): the shipped 270M is a base
# model, and asked in its chat template it repeats the question instead of
# answering (0 of 320 sampled answers started with a part of speech).
POS_PROMPT = ("Part of speech of each word (noun, verb, adjective or adverb).\n"
              "house: noun\nrun: verb\nhappy: adjective\nquickly: adverb\n{word}:")
PARTS_OF_SPEECH = ("noun", "verb", "adjective", "adverb")


def balanced(records, per_pos, rng):
    """Up to `per_pos` records of each part of speech, each kept in split order."""
    kept = []
    for pos in PARTS_OF_SPEECH:
        members = [r for r in records if r["pos"] == pos]
        keep = np.sort(rng.choice(len(members), min(per_pos, len(members)), replace=False))
        kept += [members[i] for i in keep]
    return kept


def preference_pairs(records, rng):
    by_pos = {}
    for index, record in enumerate(records):
        by_pos.setdefault(record["pos"], []).append(index)
    pairs = []
    for index, record in enumerate(records):
        candidates = by_pos[record["pos"]]
        other = index
        while other == index or records[other]["response"] == record["response"]:
            other = candidates[rng.integers(len(candidates))]
        pairs.append({"prompt": record["prompt"], "chosen": record["response"],
                      "rejected": records[other]["response"], "word": record["word"],
                      "pos": record["pos"]})
    return pairs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    source = ROOT / "datasets" / "wordnet"
    rng = np.random.default_rng(args.seed)
    for name in ("wordnet_preference", "wordnet_pos"):
        (ROOT / "datasets" / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / "LICENSE", ROOT / "datasets" / name / "LICENSE")
    for split in ("train", "validation", "test"):
        records = read_jsonl(source / f"{split}.jsonl.gz")
        # Balanced over parts of speech (WordNet is ~80% nouns), so that
        # answering "noun" to everything scores 0.25, not 0.8. Held-out splits
        # keep as many words of each part of speech as the rarest has, drawn
        # with their own generator (the preference pairs' draws stay as they were).
        if split == "train":
            prompt_records = balanced(records, 500, rng)
            keep = np.sort(rng.choice(len(records), args.train_size, replace=False))
            records = [records[i] for i in keep]
        else:
            smallest = min(sum(r["pos"] == pos for r in records) for pos in PARTS_OF_SPEECH)
            prompt_records = balanced(records, smallest, np.random.default_rng([args.seed, 1]))
        pairs = preference_pairs(records, rng)
        write_jsonl(pairs, ROOT / "datasets" / "wordnet_preference" / f"{split}.jsonl.gz")
        prompts = [{"prompt": POS_PROMPT.format(word=r["word"]), "word": r["word"],
                    "pos": r["pos"]} for r in prompt_records]
        write_jsonl(prompts, ROOT / "datasets" / "wordnet_pos" / f"{split}.jsonl.gz")
        print(f"{split}: {len(pairs)} pairs, {len(prompts)} prompts")


if __name__ == "__main__":
    main()
