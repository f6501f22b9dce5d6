"""`read_gguf` against the `gguf` package's reader, on files `write_gemma3_gguf` writes."""

import gguf
import numpy as np
import pytest

from kerasft.models import write_gemma3_gguf
from kerasft.models.gguf_reader import read_gguf


def test_read_gguf_matches_gguf_reader(causal_lm, tmp_path):
    path = write_gemma3_gguf(
        causal_lm, tmp_path / "tiny.gguf", default_tensor_type="F16",
        tensor_types={"blk.0.ffn_down.weight": "Q8_0", "blk.1.attn_q.weight": "BF16",
                      "blk.2.attn_norm.weight": "F32"},
    )  # fmt: skip
    ours, reference = read_gguf(path), gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reference.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == fields
    assert list(ours.tensors) == [tensor.name for tensor in reference.tensors]
    assert ours.tensors["blk.0.attn_q.weight"].tensor_type.name == "F16"
    assert ours.tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"  # norms stay F32
    for tensor in reference.tensors:
        mine = ours.tensors[tensor.name]
        assert mine.tensor_type == tensor.tensor_type
        assert mine.shape == tuple(int(n) for n in reversed(tensor.shape))
        np.testing.assert_array_equal(
            gguf.quants.dequantize(mine.data, mine.tensor_type),
            gguf.quants.dequantize(tensor.data, tensor.tensor_type),
        )


def test_read_gguf_rejects_other_files(tmp_path):
    path = tmp_path / "not.gguf"
    path.write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ValueError, match=r"magic=b'GGML'"):
        read_gguf(path)

