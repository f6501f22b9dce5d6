"""Prefix providers: soft prompts (prompt tuning, P-tuning) and the prefix MLP.

A soft prompt of `P` virtual tokens in front of the input is, for the real
tokens of a causal model, exactly a per-layer key/value prefix: the virtual
tokens only attend to each other, so their keys and values at every layer do
not depend on the real tokens. `SoftPrompt` computes them once per forward
pass by running the virtual embeddings through the decoder blocks
(`capture_prefixes`) and hands them to the `PrefixAttention` wrappers. The
logits keep shape `[B, T, V]` (no virtual positions in the output), labels and
sample weights need no change, and `generate()` sees the prompt at every step.
"""

import weakref
from typing import Any

import keras
from keras import ops

from kerasft.layers.prefix import PrefixProvider, capture_prefixes

PROMPT_ENCODERS = ("mlp", "lstm")


@keras.saving.register_keras_serializable(package="kerasft")
class SoftPrompt(PrefixProvider):
    """Trainable virtual-token embeddings (float32), optionally through an encoder.

    Args:
        num_virtual_tokens: number of virtual tokens `P`.
        num_layers: decoder blocks of the model.
        hidden_dim: the model's embedding width.
        encoder: `None` (prompt tuning), `"mlp"` or `"lstm"` (P-tuning).
        encoder_hidden: width of the prompt encoder.
        embeddings_scale: factor applied after the embeddings, as the
            backbone does for token embeddings (`sqrt(hidden_dim)` for Gemma),
            so that the embeddings live in the token-embedding table's space.
    """

    def __init__(self, num_virtual_tokens, num_layers, hidden_dim, encoder=None,
                 encoder_hidden=None, embeddings_scale=1.0, **kwargs):
        kwargs.setdefault("name", "soft_prompt")
        kwargs.setdefault("dtype", "float32")
        super().__init__(num_virtual_tokens, num_layers, **kwargs)
        if encoder not in (None,) + PROMPT_ENCODERS:
            raise ValueError(
                f"`encoder` must be one of {PROMPT_ENCODERS} or None. Received: encoder={encoder!r}"
            )
        self.hidden_dim = int(hidden_dim)
        self.encoder = encoder
        self.encoder_hidden = int(encoder_hidden or hidden_dim)
        self.embeddings_scale = float(embeddings_scale)
        object.__setattr__(self, "_model", None)
        self.encoder_layers = []
        if encoder == "mlp":
            self.encoder_layers = [
                keras.layers.Dense(self.encoder_hidden, activation="relu", name="mlp_0"),
                keras.layers.Dense(self.encoder_hidden, activation="relu", name="mlp_1"),
                keras.layers.Dense(self.hidden_dim, name="mlp_out"),
            ]
        elif encoder == "lstm":
            self.encoder_layers = [
                keras.layers.Bidirectional(
                    keras.layers.LSTM(self.encoder_hidden, return_sequences=True, name="lstm"),
                    name="bidirectional_lstm",
                ),
                keras.layers.Dense(self.encoder_hidden, activation="relu", name="mlp_0"),
                keras.layers.Dense(self.hidden_dim, name="mlp_out"),
            ]

    def attach(self, model: keras.Model) -> None:
        """Remembers (untracked, weakly) the model whose blocks the prompt runs through.

        Weakly: Keras's loader walks every attribute of a layer, and a plain
        reference back to the model is a cycle it follows without end
        (`keras.saving.load_model` of a prompt-tuned model, keras 3.15).
        """
        object.__setattr__(self, "_model", weakref.ref(model))

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.num_virtual_tokens, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02, seed=0),
        )
        shape = (1, self.num_virtual_tokens, self.hidden_dim)
        for layer in self.encoder_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def virtual_embeddings(self) -> Any:
        """The `(1, P, hidden)` virtual-token embeddings after the encoder (float32)."""
        x = ops.expand_dims(self.embeddings, 0)
        for layer in self.encoder_layers:
            x = layer(x)
        return x

    def compute_prefixes(self) -> list[tuple[Any, Any]]:
        x = self.virtual_embeddings() * self.embeddings_scale
        return capture_prefixes(self._model(), x)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_virtual_tokens": self.num_virtual_tokens, "num_layers": self.num_layers,
            "hidden_dim": self.hidden_dim, "encoder": self.encoder,
            "encoder_hidden": self.encoder_hidden, "embeddings_scale": self.embeddings_scale,
        })
        return config


@keras.saving.register_keras_serializable(package="kerasft")
class PrefixEncoder(PrefixProvider):
    """The prefix reparameterisation of Li & Liang (2021): `prefix = MLP(E)`.

    `E` is `(P, embedding_dim)`; the MLP (`Dense(hidden, tanh)` then a dense
    to `num_layers * 2 * kv_heads * head_dim`) is shared by all layers.

    Args:
        num_virtual_tokens: prefix length `P`.
        num_layers: decoder blocks.
        num_key_value_heads: key/value heads per attention layer.
        head_dim: head width.
        embedding_dim: width of `E`.
        hidden: width of the MLP's hidden layer.
    """

    def __init__(self, num_virtual_tokens, num_layers, num_key_value_heads, head_dim,
                 embedding_dim, hidden=512, **kwargs):
        kwargs.setdefault("name", "prefix_encoder")
        kwargs.setdefault("dtype", "float32")
        super().__init__(num_virtual_tokens, num_layers, **kwargs)
        self.num_key_value_heads = int(num_key_value_heads)
        self.head_dim = int(head_dim)
        self.embedding_dim = int(embedding_dim)
        self.hidden = int(hidden)
        self.dense_hidden = keras.layers.Dense(self.hidden, activation="tanh", name="dense_hidden")
        self.dense_out = keras.layers.Dense(
            self.num_layers * 2 * self.num_key_value_heads * self.head_dim, name="dense_out"
        )

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.num_virtual_tokens, self.embedding_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=0),
        )
        self.dense_hidden.build((self.num_virtual_tokens, self.embedding_dim))
        self.dense_out.build((self.num_virtual_tokens, self.hidden))
        self.built = True

    def compute_prefixes(self) -> list[tuple[Any, Any]]:
        out = self.dense_out(self.dense_hidden(self.embeddings))
        out = ops.reshape(out, (self.num_virtual_tokens, self.num_layers, 2,
                                self.num_key_value_heads, self.head_dim))
        return [(out[:, i, 0], out[:, i, 1]) for i in range(self.num_layers)]

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_virtual_tokens": self.num_virtual_tokens, "num_layers": self.num_layers,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "embedding_dim": self.embedding_dim, "hidden": self.hidden,
        })
        return config
