"""A tiny Gemma 3 in llama.cpp's GGUF layout, shared by the GGUF test modules.

The tiny model has the real Gemma 3 layout (query/key norms, post norms, a
global layer after five sliding-window layers) and a real SentencePiece BPE
tokenizer trained here in memory, so the files have exactly llama.cpp's layout.
"""

import io

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece

from kerasft.testing import tiny_gemma3_backbone

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at a temperature of 100 degrees Celsius.",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n",
    "<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n",
    "Four score and seven years ago our fathers brought forth on this continent",
    "a new nation, conceived in Liberty, and dedicated to the proposition",
    "that all men are created equal.  Numbers: 0 1 2 3 4 5 6 7 8 9.",
]


def _train_tokenizer_proto():
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4),
        model_writer=model,
        model_type="BPE",
        vocab_size=320,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        hard_vocab_limit=False,
        minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def _tiny_gemma3_causal_lm(proto):
    tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=False)
    # kerasft's tiny Gemma 3, resized, in llama.cpp's layout (post norms, no
    # image size); layers 0-4 use the sliding window, layer 5 is global.
    backbone = tiny_gemma3_backbone(
        num_layers=6,
        vocabulary_size=tokenizer.vocabulary_size(),
        image_size=None,
        hidden_dim=32,
        intermediate_dim=64,
        head_dim=16,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
    )
    # Norm scales start at zero; random ones make the `1 + w` convention matter.
    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        if variable.path.endswith("/scale"):
            variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=16
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)


@pytest.fixture(scope="module")
def tokenizer_proto():
    return _train_tokenizer_proto()


@pytest.fixture(scope="module")
def causal_lm(tokenizer_proto):
    return _tiny_gemma3_causal_lm(tokenizer_proto)


@pytest.fixture(scope="module")
def token_batch(causal_lm):
    tokenizer = causal_lm.preprocessor.tokenizer
    length = 14  # longer than the sliding window of 4
    token_ids = np.zeros((2, length), dtype="int32")
    for row, text in enumerate(["The quick brown fox jumps over the lazy dog.", "Water boils."]):
        ids = [2] + keras.ops.convert_to_numpy(tokenizer(text)).tolist()
        token_ids[row, : len(ids[:length])] = ids[:length]
    padding_mask = token_ids != 0
    assert padding_mask[0].all() and not padding_mask[1].all()
    return {"token_ids": token_ids, "padding_mask": padding_mask}
