from collections import Counter

import pytest

from kerasft.data import data_dir, load_shakespeare, load_wordnet


def test_wordnet_splits():
    splits = {name: load_wordnet(name) for name in ("train", "validation", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 20000, "validation": 500, "test": 500}
    words = {k: {r["word"].lower() for r in v} for k, v in splits.items()}
    assert {k: len(v) for k, v in words.items()} == {"train": 20000, "validation": 500, "test": 500}
    assert not words["train"] & words["validation"]
    assert not words["train"] & words["test"]
    assert not words["validation"] & words["test"]
    for record in splits["validation"]:
        assert set(record) == {"prompt", "response", "word", "pos"}
        assert record["prompt"] == f"Define the word {record['word']}."
        assert record["response"] and '"' not in record["response"][:1]
    pos_counts = Counter(r["pos"] for r in splits["train"])
    assert set(pos_counts) == {"noun", "verb", "adjective", "adverb"}
    assert pos_counts["noun"] > pos_counts["verb"]


def test_wordnet_known_entry():
    train = load_wordnet("train")
    run = next(r for r in train if r["word"] == "run")
    assert run == {
        "prompt": "Define the word run.",
        "response": "move fast by using one's feet, with one foot off the ground at any given time",
        "word": "run",
        "pos": "verb",
    }


def test_shakespeare_splits():
    plays = {name: load_shakespeare(name, with_titles=True) for name in ("train", "validation", "test")}
    assert {k: len(v) for k, v in plays.items()} == {"train": 12, "validation": 1, "test": 1}
    titles = {k: [p["title"] for p in v] for k, v in plays.items()}
    assert "Hamlet" in titles["train"]
    assert titles["validation"] == ["Macbeth"] and titles["test"] == ["The Comedy of Errors"]
    texts = load_shakespeare("validation")
    assert texts[0].startswith("MACBETH\n\nby William Shakespeare")
    assert len(texts[0]) == 103426
    assert sum(len(p["text"]) for p in plays["train"]) == 1591407
    for split in plays.values():
        for play in split:
            assert "Gutenberg" not in play["text"] and "\r" not in play["text"]


def test_license_and_readme_beside_each_dataset():
    root = data_dir()
    assert "Princeton University" in (root / "wordnet" / "LICENSE").read_text()
    assert "public domain" in (root / "shakespeare" / "LICENSE").read_text()
    for name in ("wordnet", "shakespeare"):
        assert (root / name / "README.md").is_file()


def test_bad_split_and_missing_data_dir(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="split='dev'"):
        load_wordnet("dev")
    monkeypatch.setenv("KERASFT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_shakespeare("train")
    monkeypatch.setenv("KERASFT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="wordnet"):
        load_wordnet("train")
