"""A reward model: a scalar head on a causal LM's pooled hidden states, Bradley-Terry loss.

`RewardModel(base=LoRA(...), pooling="last_token")` puts a float32
`Dense(1)` head (named `reward_head`) on the backbone's hidden states,
pooled by the classifier's `SequencePooling`. It trains on preference pairs
(`kerasft.data.preference_batches`, `2 * B` rows: `B` chosen then their `B`
rejected) with the Bradley-Terry loss `-log sigmoid(r_chosen - r_rejected)`
averaged over pairs, as TRL's `RewardTrainer`. A trained reward model also
scores GRPO completions (`kerasft.recipes.GRPO(reward_fns=[scorer])`).
"""

import keras
from keras import ops

from kerasft.data.preference import split_pairs
from kerasft.layers.pooling import POOLING_MODES, SequencePooling
from kerasft.models import architecture
from kerasft.recipes.base import (
    Recipe,
    freeze_all,
    mark_applied,
    register_recipe,
)
from kerasft.recipes.registry import base_recipe

HEAD_NAME = "reward_head"


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """Mean over pairs of `-log sigmoid(r_chosen - r_rejected)`."""
    return ops.mean(-ops.log_sigmoid(ops.cast(chosen_rewards, "float32")
                                     - ops.cast(rejected_rewards, "float32")))


@keras.saving.register_keras_serializable(package="kerasft")
class RewardScorer(keras.Model):
    """Maps `{"token_ids", "padding_mask"}` to one float32 reward per row, `[N]`.

    `fit` takes `PreferenceBatches` and logs `loss` (Bradley-Terry),
    `reward_margin` (mean `r_chosen - r_rejected`) and `reward_accuracy`.

    Args:
        backbone: the causal LM's backbone (shared, same variables).
        pooling: `"last_token"` or `"mean"`.
        seed: seed of the head's N(0, 0.02^2) initialiser.
    """

    def __init__(self, backbone, pooling="last_token", seed=0, **kwargs):
        kwargs.setdefault("name", f"{backbone.name}_reward_model")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.pooling_mode = pooling
        self.seed = seed
        self.pooling = SequencePooling(pooling, name="reward_pooling")
        self.head = keras.layers.Dense(
            1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02, seed=seed),
            dtype="float32", name=HEAD_NAME,
        )
        self.margin_tracker = keras.metrics.Mean(name="reward_margin")
        self.accuracy_tracker = keras.metrics.Mean(name="reward_accuracy")

    def call(self, inputs, training=False):
        inputs = {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]}
        hidden_states = self.backbone(inputs, training=training)
        return self.head(self.pooling(hidden_states, inputs["padding_mask"]))[:, 0]

    def pair_margins(self, x, y=None, sample_weight=None, rewards=None):
        """`r_chosen - r_rejected` of each pair of the batch, `[B]`."""
        rewards = self(x) if rewards is None else rewards
        chosen, rejected = split_pairs(rewards)
        return chosen - rejected

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        margins = self.pair_margins(x, rewards=y_pred)
        self.margin_tracker.update_state(margins)
        self.accuracy_tracker.update_state(ops.cast(margins > 0, "float32"))
        chosen, rejected = split_pairs(y_pred)
        return bradley_terry_loss(chosen, rejected)

    @property
    def metrics(self):
        return [*super().metrics, self.margin_tracker, self.accuracy_tracker]

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling_mode, "seed": self.seed,
                "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        return cls(backbone, **config)


@register_recipe("reward_model")
class RewardModel(Recipe):
    """A Bradley-Terry reward model on a causal LM's backbone.

    Args:
        base: a recipe applied to the causal LM first (e.g. `LoRA(rank=8)`),
            its config dict, or None (then only the head trains).
        pooling: `"last_token"` (default: the only state of a causal model
            that has read the whole text) or `"mean"`.
        seed: seed of the head's initialiser.
    """

    method = "reward_model"

    def __init__(self, base=None, pooling="last_token", seed=0):
        base = base_recipe(base, "RewardModel", optional=True)
        if pooling not in POOLING_MODES:
            raise ValueError(
                f"`pooling` must be one of {POOLING_MODES}. Received: pooling={pooling!r}"
            )
        self.base = base
        self.pooling = pooling
        self.seed = seed

    def apply(self, model):
        """Applies `base` to the causal LM `model` and returns a `RewardScorer` on its backbone."""
        return self._build(model, for_loading=False)

    def apply_for_loading(self, model):
        return self._build(model, for_loading=True)

    def _build(self, model, for_loading):
        if not architecture.has_backbone(model):
            raise ValueError(
                "RewardModel needs a model with a `backbone` (a keras-hub causal LM). "
                f"Received: model={getattr(model, 'name', model)!r}"
            )
        if self.base is None:
            freeze_all(model)
        elif for_loading:
            self.base.apply_for_loading(model)
        else:
            self.base.apply(model)
        scorer = RewardScorer(architecture.backbone(model), self.pooling, self.seed)
        width = architecture.backbone(model).hidden_dim
        scorer.pooling.build((None, None, width))
        scorer.head.build((None, width))
        mark_applied(scorer, self, applied_on=model)
        return scorer

    def compile(self, model, learning_rate=1e-3, **kwargs):
        """Compiles the `RewardScorer` for `fit(preference_batches)` (Bradley-Terry loss).

        Takes `Recipe.compile`'s arguments (schedule, weight decay, clipping).
        """
        if kwargs.get("gradient_accumulation_steps", 1) != 1:
            raise ValueError(
                "Gradient accumulation is not supported for the reward model yet. Received: "
                f"gradient_accumulation_steps={kwargs['gradient_accumulation_steps']}"
            )
        for key in ("loss", "weighted_metrics"):
            if kwargs.get(key) is not None:
                # Token losses / metrics of a causal LM cannot read one reward per row.
                raise ValueError(
                    f"RewardModel.compile sets its own loss and metrics (Bradley-Terry, "
                    f"reward_margin, reward_accuracy). Received: {key}={kwargs[key]!r}"
                )
            kwargs[key] = None
        return super().compile(model, learning_rate=learning_rate, **kwargs)

    def merge(self, model, batch=None, **options):
        """Merges the base's adapters into the backbone; the head stays."""
        if self.base is None:
            return {"merged": [], "max_abs_logit_difference": None}
        return self.base.merge(model, batch=batch, **options)

    def get_config(self):
        return {"method": self.method,
                "base": None if self.base is None else self.base.get_config(),
                "pooling": self.pooling, "seed": self.seed}
