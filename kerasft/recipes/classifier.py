"""Sequence classification on a causal LM's backbone: pooled hidden states -> Dense head."""

import keras

from kerasft.layers.pooling import POOLING_MODES, SequencePooling
from kerasft.models import architecture
from kerasft.recipes.base import (
    Recipe,
    freeze_all,
    mark_applied,
    register_recipe,
)
from kerasft.recipes.registry import base_recipe

TRAIN_MODES = ("head", "base", "all")
ACTIVATIONS = ("softmax", None)
HEAD_NAME = "classifier_head"


@register_recipe("classifier")
class Classifier(Recipe):
    """A classification head on the pooled hidden states of a causal LM's backbone.

    `apply(causal_lm)` returns a new `keras.Model` that maps
    `{"token_ids", "padding_mask"}` to `[batch, num_classes]` class
    probabilities (or logits with `activation=None`). It shares the causal
    LM's backbone (same variables), so the causal LM sees whatever the
    classifier trains. The head is a new float32 `Dense` layer named
    `classifier_head`, initialised from N(0, 0.02^2) with `seed`.

    Args:
        num_classes: number of classes, at least 2.
        pooling: `"last_token"` (state at the last non-padding position) or
            `"mean"` (mean over non-padding positions).
        base: a recipe applied to the causal LM before the head is added
            (e.g. `LoRA(rank=8)`), its config dict, or None.
        train: what trains. `"base"` (default): the head plus whatever `base`
            trains (just the head when `base` is None). `"head"`: the head
            only. `"all"`: every weight of the model.
        activation: `"softmax"` (outputs are probabilities; `predict` gives
            them directly) or None (outputs are logits).
        dropout: dropout rate on the pooled vector during training, in [0, 1).
        seed: seed of the head's initialiser and of the dropout.
    """

    def __init__(
        self,
        num_classes,
        pooling="last_token",
        base=None,
        train="base",
        activation="softmax",
        dropout=0.0,
        seed=0,
    ):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}"
            )
        if pooling not in POOLING_MODES:
            raise ValueError(
                f"`pooling` must be one of {POOLING_MODES}. Received: pooling={pooling!r}"
            )
        if train not in TRAIN_MODES:
            raise ValueError(f"`train` must be one of {TRAIN_MODES}. Received: train={train!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"`activation` must be one of {ACTIVATIONS}. Received: activation={activation!r}"
            )
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        self.num_classes = num_classes
        self.pooling = pooling
        self.base = base_recipe(base, "Classifier", optional=True, refused=(Classifier,))
        self.train = train
        self.activation = activation
        self.dropout = float(dropout)
        self.seed = seed

    def apply(self, model):
        """Builds the classifier on `model.backbone` and returns it (a new model).

        Args:
            model: a keras-hub causal LM (anything with a `backbone` that
                takes `{"token_ids", "padding_mask"}` and returns hidden
                states). It is changed in place by `base` (if any) and frozen
                as `train` says.

        Returns:
            A `keras.Model` with attributes `backbone` and `head`.
        """
        return self._build(model, for_loading=False)

    def apply_for_loading(self, model):
        # The base recipe skips any start its loaded weights replace.
        return self._build(model, for_loading=True)

    def _build(self, model, for_loading):
        if not architecture.has_backbone(model):
            raise ValueError(
                "Classifier needs a model with a `backbone` (a keras-hub causal "
                f"LM). Received: model={getattr(model, 'name', model)!r}"
            )
        backbone = architecture.backbone(model)
        if self.base is not None:
            # Wraps/freezes the backbone in place.
            if for_loading:
                self.base.apply_for_loading(model)
            else:
                self.base.apply(model)
        else:
            freeze_all(model)
        if self.train == "head":
            freeze_all(model)
        elif self.train == "all":
            for variable in model.variables:
                variable.trainable = True

        inputs = {
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
        }
        hidden_states = backbone(inputs)
        pooled = SequencePooling(self.pooling, name="classifier_pooling")(
            hidden_states, inputs["padding_mask"]
        )
        if self.dropout:
            pooled = keras.layers.Dropout(
                self.dropout, seed=self.seed, dtype="float32", name="classifier_dropout"
            )(pooled)
        head = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.02, seed=self.seed),
            dtype="float32",
            name=HEAD_NAME,
        )
        outputs = head(pooled)
        if self.activation == "softmax":
            outputs = keras.layers.Softmax(dtype="float32", name="classifier_probabilities")(outputs)
        classifier = keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")
        # Plain attributes (not tracked again): `kerasft.adapters` reads
        # `model.backbone` to fingerprint the base model.
        object.__setattr__(classifier, "backbone", backbone)
        object.__setattr__(classifier, "head", head)
        mark_applied(classifier, self, applied_on=model)
        return classifier

    def compile(self, model, learning_rate=1e-3, **kwargs):
        """Compiles for `fit(x, labels)`: AdamW, sparse cross-entropy, accuracy.

        Takes the arguments of `Recipe.compile` (schedule, weight decay,
        gradient accumulation, clipping, overrides); only the defaults of
        `learning_rate`, `loss` and `weighted_metrics` differ.
        """
        kwargs.setdefault(
            "loss",
            keras.losses.SparseCategoricalCrossentropy(from_logits=self.activation is None),
        )
        kwargs.setdefault(
            "weighted_metrics", [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        )
        return super().compile(model, learning_rate=learning_rate, **kwargs)

    def get_config(self):
        return {
            "method": self.method,
            "num_classes": self.num_classes,
            "pooling": self.pooling,
            "base": None if self.base is None else self.base.get_config(),
            "train": self.train,
            "activation": self.activation,
            "dropout": self.dropout,
            "seed": self.seed,
        }
