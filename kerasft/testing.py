"""Tiny keras-hub Gemma models for tests, notebooks and smoke runs.

The models are randomly initialised and small enough to build and train in
seconds on a CPU, but keep the real layer structure (attention with
query/key/value/attention_output, gated feed-forward) so every recipe sees the
same layer paths as on a real checkpoint.
"""

import keras
import keras_hub

TINY_VOCABULARY_SIZE = 97
# The sizes both tiny backbones share: two query heads over one key/value head.
_TINY_SIZES = dict(
    num_query_heads=2, num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, head_dim=8
)


def tiny_gemma_backbone(
    num_layers=2, dtype=None, seed=0, vocabulary_size=TINY_VOCABULARY_SIZE
):
    """A two-block `GemmaBackbone` (Gemma 1 layout) with random weights."""
    keras.utils.set_random_seed(seed)
    return keras_hub.models.GemmaBackbone(
        vocabulary_size=vocabulary_size, num_layers=num_layers, dtype=dtype, **_TINY_SIZES
    )


def tiny_gemma3_backbone(
    num_layers=2, dtype=None, seed=0, vocabulary_size=TINY_VOCABULARY_SIZE, **overrides
):
    """A two-block text-only `Gemma3Backbone` with random weights.

    Uses query/key norms and sliding-window attention like the real Gemma 3.
    `overrides` replace or add `Gemma3Backbone` arguments (for example
    `final_logit_soft_cap=0.5`); the weights depend only on `seed` and the
    shapes.
    """
    keras.utils.set_random_seed(seed)
    settings = dict(
        vocabulary_size=vocabulary_size,
        image_size=16,
        num_layers=num_layers,
        **_TINY_SIZES,
        use_query_key_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=4,
        vision_encoder=None,
        dtype=dtype,
    )
    return keras_hub.models.Gemma3Backbone(**{**settings, **overrides})


def tiny_causal_lm(
    kind="gemma3", num_layers=2, dtype=None, seed=0, vocabulary_size=TINY_VOCABULARY_SIZE
):
    """A tiny `GemmaCausalLM` (`kind="gemma"`) or `Gemma3CausalLM` (`"gemma3"`).

    The model has no preprocessor: feed it
    `{"token_ids": ..., "padding_mask": ...}` batches directly (or attach one
    whose tokenizer fits `vocabulary_size`, e.g.
    `kerasft.data.testing_tokenizer.tiny_gemma_tokenizer()` with 512).
    """
    if kind == "gemma":
        backbone = tiny_gemma_backbone(num_layers, dtype, seed, vocabulary_size)
        return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    if kind == "gemma3":
        backbone = tiny_gemma3_backbone(num_layers, dtype, seed, vocabulary_size)
        return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
    raise ValueError(f"`kind` must be 'gemma' or 'gemma3'. Received: kind={kind!r}")


def random_token_batch(batch_size=4, sequence_length=12, seed=0, pad_last=3):
    """A batch `(x, y, sample_weight)` of random tokens for a tiny causal LM.

    The last `pad_last` positions of every other row are padding, so tests
    exercise masking. `y` is `token_ids` shifted left by one.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, TINY_VOCABULARY_SIZE, (batch_size, sequence_length + 1))
    padding_mask = np.ones((batch_size, sequence_length + 1), dtype=bool)
    if pad_last:
        padding_mask[::2, -pad_last:] = False
    token_ids = np.where(padding_mask, token_ids, 0).astype("int32")
    x = {"token_ids": token_ids[:, :-1], "padding_mask": padding_mask[:, :-1]}
    y = token_ids[:, 1:]
    sample_weight = padding_mask[:, 1:].astype("float32")
    return x, y, sample_weight
