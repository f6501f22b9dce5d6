import csv
import gzip
import json

import keras
import numpy as np
import pytest

from kerasft.data import (
    instruction_arrays,
    load_records,
    load_wordnet,
    read_csv,
    read_jsonl,
    write_jsonl,
)

RECORDS = [
    {"prompt": "Define the word dog.", "response": "A dog."},
    {"prompt": "Say hello.", "response": "Hello there."},
    {"prompt": "Quote, with \"commas\",\nand a newline.", "response": "To be, or not to be."},
]


def assert_same_batches(a, b):
    for left, right in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        np.testing.assert_array_equal(left, right)


@pytest.fixture
def files(tmp_path):
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + "\n")
    jsonl_gz = tmp_path / "data.jsonl.gz"
    write_jsonl(RECORDS, jsonl_gz)
    csv_path = tmp_path / "data.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "response"])
        writer.writeheader()
        writer.writerows(RECORDS)
    csv_gz = tmp_path / "data.csv.gz"
    csv_gz.write_bytes(gzip.compress(csv_path.read_bytes()))
    return {"jsonl": jsonl, "jsonl_gz": jsonl_gz, "csv": csv_path, "csv_gz": csv_gz}


def test_readers_return_the_records(files):
    assert read_jsonl(files["jsonl"]) == RECORDS
    assert read_jsonl(files["jsonl_gz"]) == RECORDS
    assert read_csv(files["csv"]) == RECORDS
    assert read_csv(files["csv_gz"]) == RECORDS


def test_all_sources_give_identical_batches(tokenizer, files):
    import tensorflow as tf

    kwargs = dict(template="gemma", sequence_length=48, batch_size=2, seed=7)
    expected = instruction_arrays(RECORDS, tokenizer, **kwargs)
    dataset = tf.data.Dataset.from_tensor_slices(
        {key: [r[key] for r in RECORDS] for key in ("prompt", "response")}
    )
    sources = [files["jsonl"], str(files["jsonl_gz"]), files["csv"], str(files["csv_gz"]), dataset]
    for source in sources:
        assert_same_batches(instruction_arrays(source, tokenizer, **kwargs), expected)
    # Shuffled batches from a path equal shuffled batches from the list.
    from kerasft.data import instruction_batches

    a = instruction_batches(RECORDS, tokenizer, **kwargs)
    b = instruction_batches(files["csv"], tokenizer, **kwargs)
    for i in range(len(a)):
        assert_same_batches(a[i], b[i])


def test_tfds_builder_source(tokenizer, tmp_path):
    import tensorflow_datasets as tfds

    import kerasft.data.tfds_wordnet  # noqa: F401  Registers the builder.

    builder = tfds.builder("kerasft_wordnet", data_dir=str(tmp_path))
    kwargs = dict(sequence_length=128, batch_size=16, split="validation", truncate="response")
    from_tfds = instruction_arrays(builder, tokenizer, **kwargs)
    expected = instruction_arrays(load_wordnet("validation"), tokenizer, **kwargs)
    assert_same_batches(from_tfds, expected)
    assert len(from_tfds[1]) == 500
    assert builder.info.splits["train"].num_examples == 20000
    assert builder.info.splits["test"].num_examples == 500


def test_tf_dataset_values_become_python(tmp_path):
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices({"text": ["é", "b"], "n": [1, 2]})
    assert load_records(dataset) == [{"text": "é", "n": 1}, {"text": "b", "n": 2}]
    with pytest.raises(ValueError, match="element_spec"):
        load_records(tf.data.Dataset.from_tensor_slices(["a"]))
    with pytest.raises(ValueError, match="infinite"):
        load_records(tf.data.Dataset.from_tensor_slices({"a": [1]}).repeat())


def test_loader_errors(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_jsonl(missing)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_records(str(missing))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"Line 2 of .*bad.jsonl"):
        read_jsonl(bad)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="must be a JSON object"):
        read_jsonl(not_object)
    text = tmp_path / "data.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="data.txt"):
        load_records(text)
    with pytest.raises(ValueError, match=r"records\[1\]='oops'"):
        load_records([{"prompt": "a"}, "oops"])
    with pytest.raises(ValueError, match="type int"):
        load_records(3)


def test_write_jsonl_is_reproducible(tmp_path):
    write_jsonl(RECORDS, tmp_path / "a.jsonl.gz")
    write_jsonl(RECORDS, tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
