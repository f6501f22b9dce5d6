"""Safetensors files written atomically, with the process umask, checked on read.

`save_tensors` / `load_tensors` serve adapter files (`kerasft.adapters`) and
training checkpoints (`kerasft.callbacks`); `atomic_write` serves any file.
"""

import contextlib
import hashlib
import os
import pathlib
import tempfile

import keras
import numpy as np


def _to_numpy(variable):
    # Not np.ascontiguousarray: it turns 0-d scalars (step counters) into (1,).
    return np.array(keras.ops.convert_to_numpy(variable), order="C", copy=True)


def _process_umask():
    # os.umask is the only portable way to read it: set, then put back
    # (not thread-safe for files created by other threads in between).
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def tensor_sha256(array: np.ndarray) -> str:
    """The SHA-256 (hex) of one array's dtype, shape and C-order bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{tuple(array.shape)}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write) -> None:
    """Calls `write(tmp_path)` then renames over `path`: no torn files.

    The file gets the permissions of a plainly created one (`0o666` less the
    process umask; `mkstemp` alone would leave it `0o600`). Temp files of
    the same target left by a killed write (`.{name}.*.tmp` beside it) are
    removed first (a concurrent writer of the same file would lose its temp
    file: one writer per target, as for any checkpoint folder).
    """
    path = pathlib.Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_process_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> dict[str, str]:
    """Writes `{key: array}` to a safetensors file atomically.

    Returns:
        `{key: tensor_sha256}` of what was written.
    """
    from safetensors.numpy import save_file

    arrays = {key: _to_numpy(value) for key, value in tensors.items()}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
    return {key: tensor_sha256(array) for key, array in arrays.items()}


def load_tensors(path: str | os.PathLike, sha256: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Reads a safetensors file into `{key: numpy array}`.

    Args:
        path: the file.
        sha256: optional `{key: tensor_sha256}` recorded when it was written
            (`save_tensors` returns it); each tensor it names is checked.
            Missing or extra keys are left to the caller.

    Raises:
        FileNotFoundError: if there is no file, naming it.
        ValueError: if the file cannot be parsed or a tensor's bytes do not
            match `sha256`, naming the file.
    """
    from safetensors.numpy import load_file

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No safetensors file. Received: path={str(path)!r}")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ValueError(
            f"Cannot read the safetensors file {path}. Received: {type(error).__name__}: {error}"
        ) from error
    corrupt = sorted(
        key for key, array in tensors.items()
        if key in (sha256 or {}) and tensor_sha256(array) != sha256[key]
    )
    if corrupt:
        raise ValueError(
            f"The SHA-256 of some tensors in {path} does not match the one recorded when "
            f"it was written: the file is corrupt or was replaced. Received: tensors {corrupt}"
        )
    return tensors
