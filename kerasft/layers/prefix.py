"""Key/value prefixes in keras-hub Gemma and Gemma 3 attention layers.

`PrefixAttention` wraps a `CachedGemmaAttention` or `CachedGemma3Attention`
and puts `num_virtual_tokens` extra key/value positions in front of the keys
and values of every call, in training and in `generate()` (the prefix is not
written into the KV cache, it is concatenated in front of it at each step, so
keras-hub's cache shapes stay as they are).

Semantics, on purpose:
- every real token attends to every prefix position: the prefix ignores the
  causal mask, the padding mask and the sliding window of local layers;
- the prefix carries no rotary position of its own: the stored keys are used
  as they are. Prefixes computed from real tokens (`capture_prefixes`, soft
  prompts) are rotated at positions `-P .. -1`, just before the real tokens
  at `0 ..`; RoPE being relative, this equals running those `P` tokens first
  and the real tokens at positions `P ..` (up to float rounding).

Where a prefix comes from:
- the wrapper's own `prefix_key` / `prefix_value` weights, shape
  `(num_virtual_tokens, num_key_value_heads, head_dim)`, float32; or
- a shared `provider` layer (a prefix MLP, a soft prompt) that computes the
  prefixes of all layers once per forward pass; the first wrapper asks for
  them and each wrapper takes its own (`PrefixProvider.prefix_for`).
"""

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from kerasft.layers.wrapper import AdapterWrapper
from kerasft.models import architecture, gemma_attention


class PrefixProvider(keras.layers.Layer):
    """A layer that computes the prefixes of every attention layer at once.

    Subclasses implement `compute_prefixes()`, returning one `(key, value)`
    pair per attention layer, each `(num_virtual_tokens, kv_heads, head_dim)`.
    """

    def __init__(self, num_virtual_tokens, num_layers, **kwargs):
        super().__init__(**kwargs)
        self.num_virtual_tokens = int(num_virtual_tokens)
        self.num_layers = int(num_layers)
        object.__setattr__(self, "_pending", None)

    def compute_prefixes(self) -> list[tuple[Any, Any]]:
        raise NotImplementedError

    def prefix_for(self, index: int) -> tuple[Any, Any]:
        """The prefix of attention layer `index`; index 0 recomputes all.

        Each prefix is handed out once per forward pass, so a stale prefix
        from an earlier pass (or trace) can never be used.
        """
        if index == 0:
            object.__setattr__(self, "_pending", list(self.compute_prefixes()))
        pending = self._pending
        if pending is None or pending[index] is None:
            raise RuntimeError(
                "Prefix attention layers must run in model order, starting "
                f"with the first decoder block. Received: layer index={index} "
                "called before layer 0 in this forward pass"
            )
        prefix = pending[index]
        pending[index] = None
        return prefix


@keras.saving.register_keras_serializable(package="kerasft")
class PrefixAttention(AdapterWrapper):
    """Adds trainable (or provided) key/value prefixes to a Gemma attention layer.

    Args:
        layer: a built `CachedGemmaAttention` / `CachedGemma3Attention`.
        num_virtual_tokens: prefix length `P` (0 is allowed: the layer then
            computes exactly what the wrapped layer computes).
        layer_index: the decoder block index; a `provider` keys prefixes by it.
        provider: an optional shared `PrefixProvider`; without one the wrapper
            owns `prefix_key` and `prefix_value` weights.
        target_path: the wrapped layer's path.
    """

    def __init__(
        self,
        layer,
        num_virtual_tokens,
        layer_index=0,
        provider=None,
        target_path=None,
        **kwargs,
    ):
        if not gemma_attention.is_gemma_attention(layer):
            raise ValueError(
                "PrefixAttention wraps keras-hub Gemma attention layers only. "
                f"Received: layer of type {type(layer).__name__}"
            )
        if (isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int)
                or num_virtual_tokens < 0):
            raise ValueError(
                "`num_virtual_tokens` must be a non-negative integer. "
                f"Received: num_virtual_tokens={num_virtual_tokens!r}"
            )
        kwargs.setdefault("name", f"{layer.name}_prefix")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, target_path=target_path, **kwargs)
        self.num_virtual_tokens = num_virtual_tokens
        self.layer_index = int(layer_index)
        self.provider = provider
        # When a list, the layer runs without prefix, rotates at -P and
        # appends its keys/values to it (see `capture_prefixes`).
        object.__setattr__(self, "_capture", None)

    @property
    def prefix_shape(self) -> tuple[int, int, int]:
        return (self.num_virtual_tokens, self.layer.num_key_value_heads, self.layer.head_dim)

    def build(self, input_shape=None):
        if self.provider is None:
            self.add_prefix_weights()
        self.built = True

    def add_prefix_weights(self, key: Any = None, value: Any = None) -> None:
        """Creates float32 `prefix_key` / `prefix_value` (optionally set)."""
        init = keras.initializers.RandomNormal(stddev=0.02, seed=self.layer_index)
        self.prefix_key = self.add_weight(
            name="prefix_key", shape=self.prefix_shape, initializer=init, dtype="float32"
        )
        self.prefix_value = self.add_weight(
            name="prefix_value", shape=self.prefix_shape, initializer=init, dtype="float32"
        )
        if key is not None:
            self.prefix_key.assign(ops.cast(key, "float32"))
            self.prefix_value.assign(ops.cast(value, "float32"))

    def prefix(self) -> tuple[Any, Any]:
        """This layer's `(key, value)` prefix, each `(P, kv_heads, head_dim)`."""
        if self.provider is not None:
            return self.provider.prefix_for(self.layer_index)
        return self.prefix_key, self.prefix_value

    def call(
        self,
        x,
        attention_mask=None,
        cache=None,
        cache_update_index=0,
        cache_update_mask=None,
        training=False,
    ):
        layer = self.layer
        capturing = self._capture is not None
        offset = -self.num_virtual_tokens if capturing else 0
        query, key, value = gemma_attention.project(layer, x, cache_update_index + offset)
        if capturing:
            self._capture.append((key[0], value[0]))
        if cache is not None:
            key, value, cache = gemma_attention.update_cache(
                cache, key, value, cache_update_index, cache_update_mask
            )
        mask = gemma_attention.sliding_window_mask(layer, attention_mask, cache_update_index)
        if not capturing and self.num_virtual_tokens:
            prefix_key, prefix_value = self.prefix()
            batch_size = ops.shape(key)[0]
            shape = (batch_size,) + self.prefix_shape
            key = ops.concatenate(
                [ops.broadcast_to(ops.cast(prefix_key, key.dtype)[None], shape), key], axis=1
            )
            value = ops.concatenate(
                [ops.broadcast_to(ops.cast(prefix_value, value.dtype)[None], shape), value], axis=1
            )
            if mask is not None:
                visible = ops.ones((batch_size, ops.shape(mask)[1], self.num_virtual_tokens), mask.dtype)
                mask = ops.concatenate([visible, mask], axis=-1)
        attention_vec = gemma_attention.attend(layer, query, key, value, mask, training)
        output = layer.output_dense(attention_vec)
        if cache is not None:
            return output, cache
        return output

    def fold(self) -> bool:
        """Replaces a provider by its current output, stored as own weights."""
        if self.provider is None:
            return False
        key, value = self.provider.prefix_for(self.layer_index)
        key = ops.convert_to_numpy(ops.cast(key, "float32"))
        value = ops.convert_to_numpy(ops.cast(value, "float32"))
        from kerasft.targeting import unlocked_tracker

        with unlocked_tracker(self) as tracker:
            tracker.untrack(self.provider)
            self.provider = None
            self.add_prefix_weights(key, value)
        return True

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_virtual_tokens": self.num_virtual_tokens, "layer_index": self.layer_index}
        )
        return config


def prefix_wrappers(model: keras.Model) -> list[PrefixAttention]:
    """Every `PrefixAttention` in `model`, in block order."""
    from kerasft.targeting import adapter_wrappers

    return sorted(adapter_wrappers(model, PrefixAttention), key=lambda w: w.layer_index)


def attention_layers(model: keras.Model) -> list[tuple[str, keras.Layer]]:
    """`[(path, attention layer)]` of a keras-hub Gemma model, in block order.

    Raises:
        ValueError: if the model has no keras-hub Gemma attention layers.
    """
    blocks = getattr(architecture.backbone(model), "transformer_layers", None) or []
    found = [(block.attention.path, block.attention) for block in blocks
             if gemma_attention.is_gemma_attention(getattr(block, "attention", None))]
    if not found or len(found) != len(blocks):
        raise ValueError(
            "Prefix and prompt tuning need a keras-hub Gemma / Gemma 3 model whose "
            "decoder blocks all hold CachedGemma(3)Attention layers (not already "
            f"wrapped). Received: model {type(model).__name__} with "
            f"{[type(getattr(b, 'attention', None)).__name__ for b in blocks]}"
        )
    return found


def wrap_attention_layers(
    model: keras.Model, num_virtual_tokens: int, provider: PrefixProvider | None = None
) -> list[PrefixAttention]:
    """Wraps every decoder block's attention in a `PrefixAttention`, in place."""
    from kerasft.targeting import parent_path, place_under, refresh_after_surgery, replace_layer

    wrappers = []
    for index, (path, layer) in enumerate(attention_layers(model)):
        wrapper = PrefixAttention(layer, num_virtual_tokens, layer_index=index,
                                  provider=provider, target_path=path)
        place_under(wrapper, parent_path(path))
        wrapper.build()
        replace_layer(model, layer, wrapper)
        wrappers.append(wrapper)
    refresh_after_surgery(model)
    return wrappers


def embed_tokens(model: keras.Model, token_ids: Sequence[int] | np.ndarray) -> Any:
    """Token ids `(P,)` -> scaled input embeddings `(1, P, hidden)`, as the backbone."""
    backbone = architecture.backbone(model)
    x = backbone.token_embedding(ops.convert_to_tensor(np.asarray(token_ids, "int32")[None]))
    return x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)


def capture_prefixes(model: keras.Model, embeddings: Any) -> list[tuple[Any, Any]]:
    """Runs `embeddings` `(1, P, hidden)` through the decoder blocks as a prompt.

    The model must carry `PrefixAttention` wrappers with `num_virtual_tokens
    == P`. The tokens are placed at positions `-P .. -1` and see only each
    other (causal, with sliding windows), never a prefix.

    Returns:
        One `(key, value)` pair per layer, each `(P, kv_heads, head_dim)`:
        exactly the prefix that makes later tokens see this prompt.
    """
    backbone = architecture.backbone(model)
    wrappers = prefix_wrappers(model)
    length = ops.shape(embeddings)[1]
    captured = []
    for wrapper in wrappers:
        object.__setattr__(wrapper, "_capture", captured)
    try:
        x = ops.cast(embeddings, backbone.compute_dtype)
        mask = ops.ones((1, length), "int32")
        for block in architecture.decoder_blocks(model):
            x = block(x, padding_mask=mask)
    finally:
        for wrapper in wrappers:
            object.__setattr__(wrapper, "_capture", None)
    return captured
