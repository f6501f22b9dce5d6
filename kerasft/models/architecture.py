"""Where things are in a keras-hub Gemma-style model.

The one module that knows the layout of the model families kerasft supports
(keras-hub `GemmaCausalLM` / `Gemma3CausalLM` and backbones built the same
way): the backbone of a task, its decoder blocks, the token embedding that is
also the tied output projection, and the names of the attention and MLP
kernels inside a block. Recipes, quantizers, evaluation and adapter files ask
it instead of reaching into `model.backbone.transformer_layers` themselves.
Mirrors keras-hub 0.32 (`keras_hub/src/models/gemma/`, `.../gemma3/`).
"""

from typing import Any

# Layer names of the dense kernels of a Gemma / Gemma 3 decoder block.
ATTENTION_LAYER_NAMES = ("query", "key", "value", "attention_output")
MLP_LAYER_NAMES = ("ffw_gating", "ffw_gating_2", "ffw_linear")


def backbone(model: Any) -> Any:
    """The backbone of a keras-hub task (`model.backbone`), or `model` itself."""
    return getattr(model, "backbone", model)


def has_backbone(model: Any) -> bool:
    """Whether `model` is a keras-hub task with a `backbone` (not a bare backbone)."""
    return getattr(model, "backbone", None) is not None


def decoder_blocks(model: Any) -> list:
    """The decoder blocks of a keras-hub causal LM or backbone, in order.

    Raises:
        ValueError: if the model has no decoder blocks (`transformer_layers`).
    """
    blocks = getattr(backbone(model), "transformer_layers", None)
    if not blocks:
        raise ValueError(
            "`model` must be a keras-hub causal LM or backbone with decoder blocks "
            f"(`transformer_layers`). Received: model of type {type(model).__name__}"
        )
    return list(blocks)


def token_embedding(model: Any) -> Any:
    """The token embedding layer (also the tied output projection), or None."""
    return getattr(backbone(model), "token_embedding", None)


def embed_tokens(model: Any, token_ids: Any) -> Any:
    """The input of the first decoder block for text `token_ids`.

    Mirrors the text path of keras-hub 0.32's `GemmaBackbone` and
    `Gemma3Backbone` functional call: the token embedding, scaled by
    `sqrt(hidden_dim)` in the embedding's compute dtype (no image tokens).

    Args:
        model: a keras-hub causal LM or backbone.
        token_ids: int `(batch, sequence)` token ids.

    Returns:
        A `(batch, sequence, hidden_dim)` tensor.
    """
    from keras import ops

    hidden_dim = backbone(model).hidden_dim
    x = token_embedding(model)(token_ids)
    return x * ops.cast(ops.sqrt(hidden_dim), x.dtype)


def call_decoder_block(block: Any, x: Any, padding_mask: Any) -> Any:
    """One decoder block on hidden states `x`, as the backbone calls it.

    keras-hub 0.32's Gemma and Gemma 3 backbones pass each block only the
    previous block's output and the int `padding_mask` (text only: no
    `vision_mask`); the block builds its causal / sliding-window attention
    mask and the rotary positions (0, 1, ...) itself.

    Args:
        block: a decoder block (see `decoder_blocks`), or a callable taking
            the block's arguments (e.g. its `stateless_call` with the
            variable values bound).
        x: `(batch, sequence, hidden_dim)` hidden states.
        padding_mask: `(batch, sequence)` mask, True / 1 for real tokens.

    Returns:
        The block's output hidden states.
    """
    from keras import ops

    return block(x, padding_mask=ops.cast(padding_mask, "int32"))


def set_activation_checkpointing(model: Any, enabled: bool = True) -> None:
    """Rematerialises every decoder block in the backward pass (or stops doing so).

    Each block keeps only its input for the backward pass and recomputes its
    activations there: the activation memory of a training step falls from
    all blocks' intermediates to one block's, for one more forward pass of
    the blocks. This is Keras's `RematScope(mode="full")` set on blocks that
    already exist: keras 3.15's `Layer.__call__` wraps `call` in
    `keras.remat` when the layer's private `_remat_mode` is set (the scope
    only sets it at construction), on JAX (`jax.checkpoint`) and torch
    (`torch.utils.checkpoint`).

    Args:
        model: a keras-hub causal LM or backbone.
        enabled: True to checkpoint every block, False to stop.
    """
    from keras.src.backend.common.remat import RematMode

    mode = RematMode("full", None, []) if enabled else None
    for block in decoder_blocks(model):
        block._remat_mode = mode


def activation_checkpointing(model: Any) -> bool:
    """Whether every decoder block of `model` is rematerialised."""
    return all(
        getattr(getattr(block, "_remat_mode", None), "mode", None) == "full"
        for block in decoder_blocks(model)
    )
