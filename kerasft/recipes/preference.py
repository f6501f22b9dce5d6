"""Preference optimisation: DPO (sigmoid or IPO loss) and the reference-free SimPO.

Both train a causal LM's adapters on pairs of responses to the same prompt
(`kerasft.data.preference_batches`: `2 * B` rows, the `B` chosen responses
first). A response's log-probability is summed over its response tokens only
(the batch's sample weights), in float32.

- DPO (Rafailov et al. 2023): with `h = (log pi(c) - log ref(c)) - (log pi(r) -
  log ref(r))`, `loss="sigmoid"` minimises `-log sigmoid(beta * h)`;
  `loss="ipo"` (Azar et al. 2023) minimises `(h - 1 / (2 beta))^2` on
  per-token mean log-probabilities (as TRL does). The reference policy is the
  same model with its adapters switched off (`kerasft.adapters_disabled`),
  evaluated inside the training step on the same weights: no second copy.
- SimPO (Meng et al. 2024) needs no reference: it minimises
  `-log sigmoid(beta * (mean log pi(c) - mean log pi(r)) - gamma)` with
  per-token mean log-probabilities.

`apply(causal_lm)` applies the `base` adapter recipe to the causal LM and
returns a `PreferencePolicy` (a `keras.Model` around it, same variables)
whose `fit` optimises the objective; the adapter is the causal LM's own, so
`kerasft.save_adapter(policy.causal_lm)` saves a LoRA adapter that
`load_adapter` puts on a fresh base like any other.
"""

import keras
from keras import ops

from kerasft.adapter_switch import adapters_disabled
from kerasft.data.preference import split_pairs
from kerasft.recipes.base import Recipe, recipe_from_config, register_recipe
from kerasft.targeting import adapter_wrappers
from kerasft.recipes.registry import base_recipe

DPO_LOSSES = ("sigmoid", "ipo")


def token_logprobs(logits, labels):
    """`log softmax(logits)[..., label]` in float32: `[N, T, V]`, `[N, T]` -> `[N, T]`."""
    logits = ops.cast(logits, "float32")
    picked = ops.take_along_axis(logits, ops.cast(labels, "int32")[..., None], axis=-1)[..., 0]
    return picked - ops.logsumexp(logits, axis=-1)


def sequence_logprobs(logits, labels, weights):
    """`(sum, count)` of the token log-probabilities under `weights` (the response tokens), `[N]` each."""
    weights = ops.cast(weights, "float32")
    return (ops.sum(token_logprobs(logits, labels) * weights, axis=-1),
            ops.maximum(ops.sum(weights, axis=-1), 1.0))


def reference_logits(causal_lm, x):
    """The logits of `causal_lm` with its adapters off, without gradient.

    Safe inside a traced `train_step` / `compute_loss` (the traces are kept,
    and under JAX the weights are those of the step's state).
    """
    with adapters_disabled(causal_lm, reset_compiled=False):
        logits = causal_lm(x, training=False)
    return ops.stop_gradient(logits)


def adapted_policy(model, apply_base, make_policy, refusal_without_adapters=None):
    """Applies a base recipe to the causal LM `model`, then wraps it in a policy model.

    What DPO, SimPO and GRPO share: `apply_base` (the base recipe's `apply`
    or `apply_for_loading`) adapts `model`; `make_policy(causal_lm)` builds
    the training model around it, which carries the causal LM's record of
    applied recipes, so both save the same adapter file.

    Args:
        refusal_without_adapters: the error message when the base added no
            adapter (a reference with adapters off needs some), or None.
    """
    from kerasft.recipes.applied import applied_recipes, restore_applied_recipes

    adapted = apply_base(model)
    model = model if adapted is None else adapted
    if refusal_without_adapters and not adapter_wrappers(model):
        raise ValueError(refusal_without_adapters)
    policy = make_policy(model)
    restore_applied_recipes(policy, applied_recipes(model))
    return policy


@keras.saving.register_keras_serializable(package="kerasft")
class PreferencePolicy(keras.Model):
    """A causal LM trained on preference pairs by `recipe`'s objective.

    Calling it returns the causal LM's logits; `fit` takes
    `PreferenceBatches` (`(x, y, sample_weight)` of `2 * B` rows) and logs
    `loss`, `reward_margin` (mean implicit reward of chosen minus rejected)
    and `reward_accuracy` (fraction of pairs with a positive margin).

    Args:
        causal_lm: the causal LM, with the recipe's adapters applied.
        recipe: the `DPO` or `SimPO` recipe whose `pair_losses` it optimises.
    """

    def __init__(self, causal_lm, recipe, **kwargs):
        kwargs.setdefault("name", f"{causal_lm.name}_{recipe.method}")
        super().__init__(**kwargs)
        self.causal_lm = causal_lm
        self.recipe = recipe
        self.margin_tracker = keras.metrics.Mean(name="reward_margin")
        self.accuracy_tracker = keras.metrics.Mean(name="reward_accuracy")
        # `kerasft.adapters` fingerprints the base through `model.backbone`.
        object.__setattr__(self, "backbone", causal_lm.backbone)
        # Every variable is the causal LM's: built when it is (stateless_call needs it).
        self.built = causal_lm.built

    def call(self, inputs, training=False):
        return self.causal_lm(inputs, training=training)

    def pair_terms(self, x, y, logits, sample_weight):
        """`(losses [B], margins [B])` of the batch's pairs, given the policy's logits."""
        policy = sequence_logprobs(logits, y, sample_weight)
        reference = None
        if self.recipe.needs_reference:
            reference = sequence_logprobs(reference_logits(self.causal_lm, x), y, sample_weight)
        return self.recipe.pair_losses(policy, reference)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None or sample_weight is None:
            raise ValueError(
                "A PreferencePolicy trains on (x, y, sample_weight) batches of pairs "
                "(`kerasft.data.preference_batches`). Received: "
                f"y={'None' if y is None else 'set'}, "
                f"sample_weight={'None' if sample_weight is None else 'set'}"
            )
        losses, margins = self.pair_terms(x, y, y_pred, sample_weight)
        self.margin_tracker.update_state(margins)
        self.accuracy_tracker.update_state(ops.cast(margins > 0, "float32"))
        return ops.mean(losses)

    @property
    def metrics(self):
        return [*super().metrics, self.margin_tracker, self.accuracy_tracker]

    def get_config(self):
        return {
            **super().get_config(),
            "causal_lm": keras.saving.serialize_keras_object(self.causal_lm),
            "recipe": self.recipe.get_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        causal_lm = keras.saving.deserialize_keras_object(config.pop("causal_lm"))
        return cls(causal_lm, recipe_from_config(config.pop("recipe")), **config)


class PreferenceRecipe(Recipe):
    """What DPO and SimPO share: a base adapter recipe, a pair objective, `PreferencePolicy`."""

    needs_reference = False

    def pair_losses(self, policy, reference):
        """`(losses [B], margins [B])` from `(sum, count)` log-probabilities of `2 * B` rows."""
        raise NotImplementedError

    def apply(self, model):
        """Applies `base` to the causal LM `model` (in place) and returns its `PreferencePolicy`."""
        return self._build(model, self.base.apply)

    def apply_for_loading(self, model):
        return self._build(model, self.base.apply_for_loading)

    def _build(self, model, apply_base):
        refusal = None
        if self.needs_reference:
            refusal = (
                f"{type(self).__name__}'s reference policy is the model with its adapters "
                "switched off, so `base` must add adapters (LoRA, QLoRA, DoRA, IA3, ...). "
                f"Received: base={self.base!r}, which added none"
            )
        return adapted_policy(model, apply_base, lambda lm: PreferencePolicy(lm, self), refusal)

    def compile(self, model, learning_rate=5e-4, **kwargs):
        """Compiles the `PreferencePolicy` for `fit(preference_batches)`.

        Takes `Recipe.compile`'s arguments (schedule, weight decay, clipping,
        ...); the loss is the recipe's own (no `loss` / metrics to set).
        """
        if not isinstance(model, PreferencePolicy):
            raise ValueError(
                f"{type(self).__name__}.compile takes the PreferencePolicy that `apply` returned. "
                f"Received: model={getattr(model, 'name', model)!r}"
            )
        if kwargs.get("gradient_accumulation_steps", 1) != 1:
            raise ValueError(
                "Gradient accumulation is not supported for preference recipes yet (a pair "
                "loss is a mean over pairs, not tokens). Received: gradient_accumulation_steps="
                f"{kwargs['gradient_accumulation_steps']}"
            )
        kwargs.setdefault("loss", None)
        kwargs.setdefault("weighted_metrics", None)
        return super().compile(model, learning_rate=learning_rate, **kwargs)

    def merge(self, model, batch=None, **options):
        """Merges the base's adapters (into the causal LM the policy holds)."""
        return self.base.merge(getattr(model, "causal_lm", model), batch=batch, **options)


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
    return float(value)


@register_recipe("dpo")
class DPO(PreferenceRecipe):
    """Direct preference optimisation of an adapter, against the model with adapters off.

    Args:
        beta: strength of the implicit KL penalty (TRL's default 0.1).
        loss: `"sigmoid"` (DPO) or `"ipo"` (IPO, on per-token mean
            log-probabilities).
        base: the adapter recipe that trains (`LoRA(...)`, `QLoRA(...)`, any
            recipe adding adapter wrappers) or its config dict.
    """

    method = "dpo"
    needs_reference = True

    def __init__(self, beta=0.1, loss="sigmoid", base=None):
        self.beta = _positive("beta", beta)
        if loss not in DPO_LOSSES:
            raise ValueError(f"`loss` must be one of {DPO_LOSSES}. Received: loss={loss!r}")
        self.loss = loss
        self.base = base_recipe(base, "DPO", refused=(PreferenceRecipe,))

    def pair_losses(self, policy, reference):
        (policy_sum, count), (reference_sum, _) = policy, reference
        if self.loss == "ipo":
            policy_sum, reference_sum = policy_sum / count, reference_sum / count
        log_ratio = policy_sum - reference_sum
        chosen, rejected = split_pairs(log_ratio)
        h = chosen - rejected
        margins = self.beta * h
        if self.loss == "ipo":
            return ops.square(h - 1.0 / (2.0 * self.beta)), margins
        return -ops.log_sigmoid(margins), margins

    def get_config(self):
        return {"method": self.method, "beta": self.beta, "loss": self.loss,
                "base": self.base.get_config()}


@register_recipe("simpo")
class SimPO(PreferenceRecipe):
    """SimPO: reference-free preference optimisation on length-normalised log-probabilities.

    Args:
        beta: reward scale (the paper's 2.0 to 2.5).
        gamma: target reward margin (the paper's `gamma / beta` ~ 0.5).
        base: the adapter recipe that trains, or its config dict (any recipe:
            no reference is needed, so full fine-tuning works too).
    """

    method = "simpo"

    def __init__(self, beta=2.0, gamma=1.0, base=None):
        self.beta = _positive("beta", beta)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise ValueError(f"`gamma` must be a number >= 0. Received: gamma={gamma!r}")
        self.gamma = float(gamma)
        self.base = base_recipe(base, "SimPO", refused=(PreferenceRecipe,))

    def pair_losses(self, policy, reference):
        total, count = policy
        chosen, rejected = split_pairs(total / count)
        margins = self.beta * (chosen - rejected)
        return -ops.log_sigmoid(margins - self.gamma), margins

    def get_config(self):
        return {"method": self.method, "beta": self.beta, "gamma": self.gamma,
                "base": self.base.get_config()}
