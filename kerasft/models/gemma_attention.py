"""The steps of keras-hub's Gemma / Gemma 3 attention, as functions of the layer.

Prefix tuning needs to put extra key/value columns between the projections
and the attention itself, which keras-hub's `CachedGemmaAttention.call` and
`CachedGemma3Attention.call` do in one piece. These functions are those
steps, computed from the layer's own sub-layers and settings. They mirror
keras-hub 0.32 (`keras_hub/src/models/gemma/gemma_attention.py`,
`.../gemma3/gemma3_attention.py`) and call three of its private methods
(`_apply_rope`, `_mask_sliding_window`, `_use_fused_attention_op`), which
this module alone may touch; `tests/models/test_gemma_attention.py` checks
that the composition equals upstream's layer, with and without a KV cache.
"""

from typing import Any

import numpy as np
from keras import ops

ATTENTION_CLASS_NAMES = ("CachedGemmaAttention", "CachedGemma3Attention")


def is_gemma_attention(layer: Any) -> bool:
    """Whether `layer` is a keras-hub Gemma / Gemma 3 attention layer."""
    return type(layer).__name__ in ATTENTION_CLASS_NAMES


def project(layer, x, start_index):
    """Query, key and value of `x`: dense projections, Gemma 3's norms, RoPE."""
    query = layer.query_dense(x)
    key = layer.key_dense(x)
    if getattr(layer, "use_query_key_norm", False):
        query = layer.query_norm(query)
        key = layer.key_norm(key)
    query = layer._apply_rope(query, start_index)
    key = layer._apply_rope(key, start_index)
    return query, key, layer.value_dense(x)


def update_cache(cache, key, value, cache_update_index, cache_update_mask=None):
    """Writes `key`/`value` into the KV cache at `cache_update_index`.

    Gemma keeps one stacked `[batch, 2, length, heads, head_dim]` cache,
    Gemma 3 a `(key, value)` pair; where `cache_update_mask` is False (Gemma
    3's prompt positions) the cached entries are kept.

    Returns:
        `(key, value, cache)`: the full keys and values to attend to, and the
        updated cache in the layer's own format.
    """
    stacked = not isinstance(cache, (tuple, list))
    key_cache, value_cache = (cache[:, 0, ...], cache[:, 1, ...]) if stacked else cache
    start = [0, cache_update_index, 0, 0]
    if cache_update_mask is not None:
        update_mask = ops.expand_dims(ops.expand_dims(cache_update_mask, -1), -1)
        key = ops.where(update_mask, key, ops.slice(key_cache, start, ops.shape(key)))
        value = ops.where(update_mask, value, ops.slice(value_cache, start, ops.shape(value)))
    key = ops.slice_update(key_cache, start, key)
    value = ops.slice_update(value_cache, start, value)
    cache = ops.stack((key, value), axis=1) if stacked else (key, value)
    return key, value, cache


def sliding_window_mask(layer, mask, cache_update_index):
    """The attention mask with the layer's sliding window applied (if it has one)."""
    if layer.use_sliding_window_attention and mask is not None:
        return layer._mask_sliding_window(mask, cache_update_index=cache_update_index)
    return mask


def attend(layer, query, key, value, mask, training=False):
    """The layer's attention of `query` over `key`/`value` under `mask`.

    keras-hub's `_compute_attention` without its sliding window (apply
    `sliding_window_mask` first), then zeroing the rows that attend to
    nothing, as the layer's `call` does. Grouped-query heads, the query
    normalisation and the logit soft cap are the layer's.
    """
    if layer.query_head_dim_normalize:
        normalization = 1 / np.sqrt(layer.head_dim)
    else:
        normalization = 1 / np.sqrt(layer.hidden_dim // layer.num_query_heads)
    if layer._use_fused_attention_op():
        kwargs = {"attn_logits_soft_cap": layer.logit_soft_cap} if layer.logit_soft_cap else {}
        fused_mask = None if mask is None else ops.cast(ops.expand_dims(mask, axis=1), "bool")
        outputs = ops.dot_product_attention(
            query=query, key=key, value=value, mask=fused_mask, scale=normalization, **kwargs
        )
    else:
        q = query * ops.cast(normalization, dtype=query.dtype)
        q_shape = ops.shape(q)
        groups = layer.num_query_heads // layer.num_key_value_heads
        q = ops.reshape(q, (*q_shape[:-2], layer.num_key_value_heads, groups, q_shape[-1]))
        b, q_len, _, _, h = ops.shape(q)
        logits = ops.einsum("btkgh,bskh->bkgts", q, key)
        if layer.logit_soft_cap is not None:
            logits = ops.multiply(
                ops.tanh(ops.divide(logits, layer.logit_soft_cap)), layer.logit_soft_cap
            )
        expanded = None if mask is None else mask[:, None, None, :, :]
        weights = ops.cast(layer.softmax(logits, mask=expanded), logits.dtype)
        if layer.dropout:
            weights = layer.dropout_layer(weights, training=training)
        results = ops.einsum("bkgts,bskh->btkgh", weights, value)
        outputs = ops.reshape(results, (b, q_len, layer.num_query_heads, h))
    if mask is not None:
        no_attended = ops.all(ops.equal(mask, 0), axis=-1, keepdims=True)[..., None]
        outputs = ops.where(no_attended, ops.zeros_like(outputs), outputs)
    return outputs
