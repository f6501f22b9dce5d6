"""kerasft.models.gemma_attention against keras-hub's own attention layers."""

import numpy as np
import pytest
from keras import ops

from kerasft.models import architecture, gemma_attention
from kerasft.testing import tiny_causal_lm


def upstream_and_mirrored(layer, x, mask, cache=None, index=0, update_mask=None):
    """keras-hub's `layer(...)` and the same call composed from our steps."""
    kwargs = {"attention_mask": mask, "cache_update_index": index}
    if cache is not None:
        kwargs["cache"] = cache
    if update_mask is not None:
        kwargs["cache_update_mask"] = update_mask
    upstream = layer(x, **kwargs)
    query, key, value = gemma_attention.project(layer, x, index)
    new_cache = None
    if cache is not None:
        key, value, new_cache = gemma_attention.update_cache(cache, key, value, index, update_mask)
    attention_mask = gemma_attention.sliding_window_mask(layer, mask, index)
    mirrored = layer.output_dense(gemma_attention.attend(layer, query, key, value, attention_mask))
    return upstream, (mirrored, new_cache) if cache is not None else mirrored


def causal_mask(batch, queries, keys, offset=0, padded=0):
    mask = np.tril(np.ones((queries, keys), "int32"), k=offset)
    mask = np.broadcast_to(mask, (batch, queries, keys)).copy()
    if padded:
        mask[-1, :, keys - padded:] = 0  # the last row sees no padding, and row 0 sees nothing
        mask[-1, 0, :] = 0
    return mask


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_every_block_without_cache_equals_upstream(kind):
    model = tiny_causal_lm(kind, num_layers=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, model.backbone.hidden_dim)).astype("float32")
    mask = causal_mask(2, 7, 7, padded=2)
    for block in architecture.decoder_blocks(model):
        assert gemma_attention.is_gemma_attention(block.attention)
        upstream, mirrored = upstream_and_mirrored(block.attention, x, mask)
        np.testing.assert_allclose(ops.convert_to_numpy(mirrored), ops.convert_to_numpy(upstream),
                                   atol=1e-6)


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_a_cached_decoding_step_equals_upstream(kind):
    model = tiny_causal_lm(kind, num_layers=2)
    rng = np.random.default_rng(1)
    backbone = model.backbone
    layer = architecture.decoder_blocks(model)[0].attention
    length, index = 9, 5
    shape = (2, length, backbone.num_key_value_heads, backbone.head_dim)
    key_cache = rng.normal(size=shape).astype("float32")
    value_cache = rng.normal(size=shape).astype("float32")
    cache = (ops.stack((key_cache, value_cache), axis=1) if kind == "gemma"
             else (ops.convert_to_tensor(key_cache), ops.convert_to_tensor(value_cache)))
    x = rng.normal(size=(2, 1, backbone.hidden_dim)).astype("float32")
    mask = causal_mask(2, 1, length, offset=index)
    update_mask = np.array([[True], [False]]) if kind == "gemma3" else None
    (upstream, upstream_cache), (mirrored, mirrored_cache) = upstream_and_mirrored(
        layer, x, mask, cache=cache, index=index, update_mask=update_mask
    )
    np.testing.assert_allclose(ops.convert_to_numpy(mirrored), ops.convert_to_numpy(upstream), atol=1e-6)
    for ours, theirs in zip(ops.convert_to_numpy(ops.stack(mirrored_cache)) if kind == "gemma3"
                            else [ops.convert_to_numpy(mirrored_cache)],
                            ops.convert_to_numpy(ops.stack(upstream_cache)) if kind == "gemma3"
                            else [ops.convert_to_numpy(upstream_cache)]):
        np.testing.assert_array_equal(ours, theirs)


def test_other_layers_are_not_gemma_attention():
    model = tiny_causal_lm("gemma3")
    assert not gemma_attention.is_gemma_attention(model.backbone.token_embedding)
    assert not gemma_attention.is_gemma_attention(None)
