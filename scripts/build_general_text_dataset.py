"""Builds datasets/general_text/: general reference text and factual probes.

The forgetting check (`kerasft.evaluate.forgetting`) needs text a model
knew before fine-tuning and that no kerasft task trains on. Source: the
Python Language Reference topics that ship inside every CPython as
`pydoc_data.topics` (what `help("if")` prints), so no download is needed.
Run from the repository root with the Python whose docs you want (the
shipped files were built with CPython 3.11.7):

    python scripts/build_general_text_dataset.py

Files (`{"title": topic, "text": prose}` per record, sorted by title):

- `replay.jsonl.gz`: every other topic (sorted order, even positions): the
  general text that `data.replay_fraction` mixes into training batches;
- `reference.jsonl.gz`: the other topics: held out, only ever scored;
- `probes.jsonl`: `{"prompt", "answer"}` common-knowledge facts, written for
  kerasft (answers start with a space, as a model continues the prompt).

Cleaning: indented lines (grammar productions and code examples) and
underline rows (`*****`, `=====`) are dropped, runs of blank lines are
squeezed. Deterministic output (gzip without timestamps).
"""

import argparse
import gzip
import io
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBES = [
    ("The capital of France is", " Paris"),
    ("The capital of Japan is", " Tokyo"),
    ("The capital of Italy is", " Rome"),
    ("The capital of Germany is", " Berlin"),
    ("The capital of Spain is", " Madrid"),
    ("The capital of England is", " London"),
    ("The largest ocean on Earth is the", " Pacific"),
    ("Water is made of hydrogen and", " oxygen"),
    ("The planet closest to the Sun is", " Mercury"),
    ("The chemical symbol for gold is", " Au"),
    ("One, two, three, four,", " five"),
    ("Monday, Tuesday,", " Wednesday"),
    ("January, February,", " March"),
    ("The opposite of hot is", " cold"),
    ("The color of the clear daytime sky is", " blue"),
    ("A week has seven", " days"),
    ("The first letter of the English alphabet is", " A"),
    ("Romeo and Juliet was written by William", " Shakespeare"),
    ("The Earth orbits the", " Sun"),
    ("The freezing point of water in degrees Celsius is", " 0"),
    ("Ten plus ten equals", " twenty"),
    ("Cats and dogs are", " animals"),
    ("The Great Wall is in", " China"),
    ("The Statue of Liberty is in New", " York"),
]


def clean(text: str) -> str:
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("   ") or re.fullmatch(r"[*=\-~^]{3,}", line.strip()):
            continue
        lines.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def write_jsonl_gz(path: Path, records) -> None:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as f:
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "datasets" / "general_text"))
    args = parser.parse_args(argv)
    from pydoc_data.topics import topics

    records = [{"title": title, "text": clean(topics[title])} for title in sorted(topics)]
    records = [r for r in records if len(r["text"]) >= 200]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_gz(out / "replay.jsonl.gz", records[0::2])
    write_jsonl_gz(out / "reference.jsonl.gz", records[1::2])
    (out / "probes.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PROBES)
    )
    for name, part in (("replay", records[0::2]), ("reference", records[1::2])):
        print(f"{name}: {len(part)} topics, {sum(len(r['text']) for r in part):,} characters "
              f"(Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
