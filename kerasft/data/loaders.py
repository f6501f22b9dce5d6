"""Record loaders: JSONL, CSV, Python lists, tf.data datasets and TFDS.

Every loader returns a plain Python `list` of `dict` records with `str` values
for text fields, so the rest of `kerasft.data` sees one format whatever the
source was.
"""

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
_CSV_SUFFIXES = (".csv", ".csv.gz")


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _check_path(path, argument="path") -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file. Received: {argument}={str(path)!r}")
    return path


def read_jsonl(path) -> list[dict]:
    """Reads a JSON Lines file (optionally gzip-compressed) into records.

    Blank lines are skipped.

    Args:
        path: Path to a `.jsonl` or `.jsonl.gz` file.

    Returns:
        A list of dicts, one per line, in file order.

    Raises:
        FileNotFoundError: If `path` does not exist.
        ValueError: If a line is not valid JSON or not a JSON object; the
            message names the line number.
    """
    path = _check_path(path)
    records = []
    with _open_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"Line {line_number} of {str(path)!r} is not valid JSON ({e}). "
                    f"Received: {line[:200]!r}"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"Line {line_number} of {str(path)!r} must be a JSON object. "
                    f"Received: {line[:200]!r}"
                )
            records.append(record)
    return records


def write_jsonl(records: Iterable[dict], path) -> None:
    """Writes records as JSON Lines, gzip-compressed if `path` ends in `.gz`.

    Compressed output is byte-for-byte reproducible (no timestamp in the gzip
    header).

    Args:
        records: Dicts of JSON-serialisable values.
        path: Output path.
    """
    path = Path(path)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    data = text.encode("utf-8")
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
                f.write(data)
    else:
        path.write_bytes(data)


def read_csv(path, **reader_kwargs) -> list[dict]:
    """Reads a CSV file with a header row (optionally gzip-compressed).

    Args:
        path: Path to a `.csv` or `.csv.gz` file. The first row names the
            columns.
        **reader_kwargs: Passed to `csv.DictReader` (e.g. `delimiter="\\t"`).

    Returns:
        A list of dicts mapping column names to string values, in file order.

    Raises:
        FileNotFoundError: If `path` does not exist.
    """
    path = _check_path(path)
    with _open_text(path) as f:
        return [dict(row) for row in csv.DictReader(f, **reader_kwargs)]


def _to_python(value):
    """Converts numpy / tf values from a dataset element to Python values."""
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _to_python(value.item())
        return [_to_python(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value


def read_tf_dataset(dataset) -> list[dict]:
    """Reads a finite `tf.data.Dataset` of dicts into records.

    String tensors become `str` (UTF-8), scalars become Python numbers.

    Args:
        dataset: A `tf.data.Dataset` whose elements are dicts of tensors
            (unbatched).

    Returns:
        A list of dicts.

    Raises:
        ValueError: If the elements are not dicts or the dataset is infinite.
    """
    import tensorflow as tf

    if not isinstance(dataset.element_spec, dict):
        raise ValueError(
            "`dataset` elements must be dicts of tensors (e.g. "
            "{'prompt': ..., 'response': ...}). Received: element_spec="
            f"{dataset.element_spec}"
        )
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "`dataset` is infinite (e.g. `.repeat()` without a count). "
            f"Received: dataset={dataset}"
        )
    return [_to_python(element) for element in dataset.as_numpy_iterator()]


def read_tfds(name_or_builder, split: str = "train", data_dir=None) -> list[dict]:
    """Reads a split of a TensorFlow Datasets dataset into records.

    The dataset is prepared first (`download_and_prepare`); local builders
    such as `kerasft_wordnet` need no network.

    Args:
        name_or_builder: A registered TFDS name (`"kerasft_wordnet"`,
            `"name/config:1.0.0"`) or a `tfds.core.DatasetBuilder`.
        split: The split to read, e.g. `"train"` or `"train[:10%]"`.
        data_dir: Where TFDS keeps prepared data (TFDS default if `None`).

    Returns:
        A list of dicts.
    """
    import tensorflow_datasets as tfds

    if isinstance(name_or_builder, str):
        try:
            builder = tfds.builder(name_or_builder, data_dir=data_dir)
        except Exception as e:  # tfds raises several registry error types.
            raise ValueError(
                f"Could not find a TFDS dataset named {name_or_builder!r} ({e}). "
                f"Received: source={name_or_builder!r}"
            ) from None
    else:
        builder = name_or_builder
    builder.download_and_prepare()
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    return read_tf_dataset(dataset)


def _is_tfds_builder(obj) -> bool:
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # pragma: no cover - tfds is a dependency.
        return False
    return isinstance(obj, tfds.core.DatasetBuilder)


def _is_tf_dataset(obj) -> bool:
    module = type(obj).__module__
    if not module.startswith("tensorflow"):
        return False
    import tensorflow as tf

    return isinstance(obj, tf.data.Dataset)


def load_records(source: Any, split: str = "train", data_dir=None) -> list[dict]:
    """Loads records from any supported source.

    Args:
        source: One of
            - a list or tuple of dicts (returned as a list, not copied);
            - a path (`str` or `os.PathLike`) to a `.jsonl[.gz]`,
              `.ndjson[.gz]` or `.csv[.gz]` file;
            - a `tf.data.Dataset` of dicts;
            - a `tfds.core.DatasetBuilder`, or the registered name of a TFDS
              dataset (a string that is not a file path).
        split: The split to read from a TFDS source.
        data_dir: TFDS data directory for a TFDS name.

    Returns:
        A list of dict records.

    Raises:
        ValueError: If `source` has an unsupported type or suffix, or an
            element of a list is not a dict.
        FileNotFoundError: If `source` names a missing `.jsonl`/`.csv` file.
    """
    if isinstance(source, (list, tuple)):
        for index, record in enumerate(source):
            if not isinstance(record, dict):
                raise ValueError(
                    f"Every record must be a dict. Received: records[{index}]="
                    f"{record!r} of type {type(record).__name__}"
                )
        return list(source)
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        lowered = name.lower()
        if lowered.endswith(_JSONL_SUFFIXES):
            return read_jsonl(source)
        if lowered.endswith(_CSV_SUFFIXES):
            return read_csv(source)
        if Path(name).exists() or isinstance(source, os.PathLike):
            raise ValueError(
                f"Unsupported file type; expected one of "
                f"{_JSONL_SUFFIXES + _CSV_SUFFIXES}. Received: source={name!r}"
            )
        return read_tfds(name, split=split, data_dir=data_dir)
    if _is_tf_dataset(source):
        return read_tf_dataset(source)
    if _is_tfds_builder(source):
        return read_tfds(source, split=split)
    raise ValueError(
        "`source` must be a list of dicts, a .jsonl/.csv path, a "
        "tf.data.Dataset, a TFDS builder or a TFDS name. Received: "
        f"source of type {type(source).__name__}"
    )


def get_field(record: dict, key: str, index: int) -> str:
    """Returns `record[key]` as a string, with a clear error if it is missing.

    Args:
        record: One record.
        key: The field name.
        index: The record's position, for the error message.

    Raises:
        KeyError: If `key` is missing; names the key and the keys present.
        TypeError: If the value is not a string.
    """
    try:
        value = record[key]
    except KeyError:
        raise KeyError(
            f"Record {index} has no key {key!r}; its keys are {sorted(record)}. "
            f"Pass `prompt_key=`/`response_key=` to use other field names."
        ) from None
    if not isinstance(value, str):
        raise TypeError(
            f"Record {index} field {key!r} must be a string. Received: "
            f"{key}={value!r} of type {type(value).__name__}"
        )
    return value
