"""Prompt tuning and P-tuning: trainable virtual tokens in front of the input."""

import numpy as np
from keras import ops

from kerasft.layers.prefix import attention_layers, wrap_attention_layers
from kerasft.layers.soft_prompt import PROMPT_ENCODERS, SoftPrompt
from kerasft.models import architecture
from kerasft.recipes.base import Recipe, freeze_all, mark_applied, register_recipe
from kerasft.recipes.prefix_tuning import (
    build_provider,
    merge_prefixes,
    validate_num_virtual_tokens,
)


def _soft_prompt(model, num_virtual_tokens, encoder=None, hidden=None):
    backbone = architecture.backbone(model)
    provider = build_provider(SoftPrompt(
        num_virtual_tokens, backbone.num_layers, backbone.hidden_dim, encoder=encoder,
        encoder_hidden=hidden, embeddings_scale=float(np.sqrt(backbone.hidden_dim)),
    ))
    provider.attach(model)
    return provider


def _tokenize(text, tokenizer, model):
    tokenizer = tokenizer or getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "A text `init` needs a tokenizer: pass `tokenizer=` or use a model with a "
            f"preprocessor. Received: init={text!r}, tokenizer=None"
        )
    return [int(i) for i in np.asarray(ops.convert_to_numpy(tokenizer(text))).reshape(-1)]


@register_recipe("prompt_tuning")
class PromptTuning(Recipe):
    """Prompt tuning (Lester et al., 2021): `P` trainable float32 embeddings.

    The virtual tokens sit in front of every sequence at positions `-P .. -1`;
    the real tokens keep positions `0 ..`, the model's outputs keep shape
    `[B, T, V]` and batches need no change. Every real token attends to all
    virtual tokens (also beyond a sliding window). The rest is frozen.

    Args:
        num_virtual_tokens: `P`.
        init: `"random"`, `"vocab"` (rows of the token-embedding table picked
            at random) or any other string: the text whose tokens (repeated to
            fill `P`) initialise the prompt.
        tokenizer: for a text `init` when the model has no preprocessor; not
            saved (the resolved ids are, as `init_token_ids`).
        init_token_ids: the token ids a text or vocab init resolved to.
        seed: seed of the `"vocab"` sampling.
    """

    encoder = None

    def __init__(self, num_virtual_tokens=20, init="random", tokenizer=None,
                 init_token_ids=None, seed=0):
        validate_num_virtual_tokens(num_virtual_tokens)
        if not isinstance(init, str) or not init:
            raise ValueError(f"`init` must be 'random', 'vocab' or a text. Received: init={init!r}")
        self.num_virtual_tokens = num_virtual_tokens
        self.init = init
        self.tokenizer = tokenizer
        self.init_token_ids = list(init_token_ids) if init_token_ids is not None else None
        self.seed = seed

    def _init_ids(self, model):
        if self.init_token_ids is not None or self.init == "random":
            return self.init_token_ids
        if self.init == "vocab":
            vocabulary_size = architecture.backbone(model).vocabulary_size
            rng = np.random.default_rng(self.seed)
            return [int(i) for i in rng.integers(0, vocabulary_size, self.num_virtual_tokens)]
        ids = _tokenize(self.init, self.tokenizer, model)
        if not ids:
            raise ValueError(f"The init text has no tokens. Received: init={self.init!r}")
        return [ids[i % len(ids)] for i in range(self.num_virtual_tokens)]

    def apply(self, model):
        attention_layers(model)  # fail before changing anything
        ids = self._init_ids(model)
        backbone = architecture.backbone(model)
        table = ops.convert_to_numpy(ops.cast(backbone.token_embedding.embeddings, "float32"))
        freeze_all(model)
        provider = _soft_prompt(model, self.num_virtual_tokens, self.encoder, getattr(self, "hidden", None))
        if ids is not None:
            provider.embeddings.assign(table[np.asarray(ids)])
        elif self.encoder is None:  # random, at the scale of the table
            rng = np.random.default_rng(self.seed)
            provider.embeddings.assign(
                rng.normal(0.0, float(table.std()), provider.embeddings.shape).astype("float32")
            )
        self.init_token_ids = ids
        wrap_attention_layers(model, self.num_virtual_tokens, provider=provider)
        mark_applied(model, self)
        return model

    def compile(self, model, **kwargs):
        """`Recipe.compile`; with only the soft prompt training, no weight decay.

        The prompt is an embedding, which kerasft's AdamW does not decay; an
        AdamW left with nothing to decay crashes on torch (an empty
        `torch._foreach_mul_`), so decay is switched off here.
        """
        model = super().compile(model, **kwargs)
        if self.encoder is None and "optimizer" not in kwargs:
            model.optimizer.weight_decay = None
        return model

    def merge(self, model, batch=None, **options):
        """Replaces the soft prompt by its per-layer keys/values (`Recipe.merge`).

        Exact, and generation no longer runs the virtual tokens through the
        blocks at each step. The model becomes (and is saved as) a
        `PrefixTuning(num_virtual_tokens, reparameterize=False)` model; the
        report's `merged` lists the attention layers given prefixes.
        """
        return merge_prefixes(self, model, batch, options)

    def get_config(self):
        return {
            "method": self.method,
            "num_virtual_tokens": self.num_virtual_tokens,
            "init": self.init,
            "init_token_ids": self.init_token_ids,
            "seed": self.seed,
        }


@register_recipe("ptuning")
class PTuning(PromptTuning):
    """P-tuning (Liu et al., 2021): virtual tokens from a trainable prompt encoder.

    `P` trainable input embeddings go through an `"mlp"` (Dense-ReLU,
    Dense-ReLU, Dense) or `"lstm"` (bidirectional LSTM, Dense-ReLU, Dense)
    encoder; the result is used as in `PromptTuning`.

    Args:
        num_virtual_tokens: `P`.
        encoder: `"mlp"` or `"lstm"`.
        hidden: encoder width (default: the model width).
    """

    def __init__(self, num_virtual_tokens=20, encoder="mlp", hidden=None):
        super().__init__(num_virtual_tokens, init="random")
        if encoder not in PROMPT_ENCODERS:
            raise ValueError(f"`encoder` must be one of {PROMPT_ENCODERS}. Received: encoder={encoder!r}")
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0):
            raise ValueError(f"`hidden` must be a positive integer. Received: hidden={hidden!r}")
        self.encoder = encoder
        self.hidden = hidden

    def get_config(self):
        return {
            "method": self.method,
            "num_virtual_tokens": self.num_virtual_tokens,
            "encoder": self.encoder,
            "hidden": self.hidden,
        }
