"""GRPO: group relative policy optimisation of an adapter from verifiable or learned rewards.

Each step (Shao et al. 2024, DeepSeekMath; TRL's `GRPOTrainer`):

1. for each of `P` prompts, sample `group_size` (G) completions with the
   causal LM's own sampler (keras-hub `generate`, `keras_hub.samplers.
   RandomSampler(temperature)`);
2. score every completion with the reward functions (Python callables, or a
   trained `RewardScorer` from `recipes.RewardModel`), summed;
3. advantage of a completion = (its reward - its group's mean) / (the group's
   standard deviation + 1e-4): zero for a group whose rewards are all equal;
4. one ordinary `fit` on those completions, minimising per token
   `-(min(rho * A, clip(rho, 1 - clip, 1 + clip) * A) - beta * KL)` with
   `rho = pi / pi_old`, averaged over each completion's tokens then over
   completions. `KL` is the k3 estimator `exp(q) - q - 1`, `q = log ref -
   log pi`, against the reference: the same model with its adapters off
   (`kerasft.adapters_disabled`, no second copy of the weights).

With `updates_per_rollout=1` (default) `pi_old` is `pi` without gradient,
as in TRL; with more, the log-probabilities at sampling time are kept and
the clip bounds the ratio.
"""

import time
from typing import Callable, Sequence

import keras
import numpy as np
from keras import ops

from kerasft import training_forward
from kerasft.adapter_switch import adapters_disabled
from kerasft.evaluate.generation import decode_generated, generate_token_ids
from kerasft.models import architecture
from kerasft.recipes.base import Recipe, recipe_from_config, register_recipe
from kerasft.recipes.preference import adapted_policy, reference_logits, token_logprobs
from kerasft.recipes.registry import base_recipe

ADVANTAGE_EPSILON = 1e-4


def _reward_functions():
    from kerasft.data.preference import part_of_speech_reward

    # Rewards a config file can name (`reward_fns: [part_of_speech]`).
    return {"part_of_speech": part_of_speech_reward}


def group_advantages(rewards, group_size: int) -> np.ndarray:
    """Group-normalised advantages of `P * G` rewards laid out prompt by prompt.

    `(r - mean of its group) / (sample standard deviation of its group + 1e-4)`;
    exactly 0 for every member of a group whose rewards are equal.

    Raises:
        ValueError: if the number of rewards is not a multiple of `group_size`.
    """
    rewards = np.asarray(rewards, "float64").reshape(-1)
    if group_size < 2 or rewards.size % group_size:
        raise ValueError(
            f"Rewards must come in groups of group_size >= 2. Received: {rewards.size} rewards, "
            f"group_size={group_size}"
        )
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    return (centred / (groups.std(axis=1, ddof=1, keepdims=True) + ADVANTAGE_EPSILON)
            ).reshape(-1).astype("float32")


@keras.saving.register_keras_serializable(package="kerasft")
class GRPOPolicy(keras.Model):
    """A causal LM trained by the GRPO objective on rollout batches.

    `fit` takes `(x, y, sample_weight)` where `x` also holds `"advantages"`
    `[N]` (and, for several updates per rollout, `"old_logprobs"` `[N, T]`),
    and `sample_weight` marks completion tokens. Logs `loss` and `kl`.
    """

    def __init__(self, causal_lm, recipe, **kwargs):
        kwargs.setdefault("name", f"{causal_lm.name}_grpo")
        super().__init__(**kwargs)
        self.causal_lm = causal_lm
        self.recipe = recipe
        self.kl_tracker = keras.metrics.Mean(name="kl")
        object.__setattr__(self, "backbone", causal_lm.backbone)
        # Every variable is the causal LM's: built when it is (stateless_call needs it).
        self.built = causal_lm.built

    def call(self, inputs, training=False):
        inputs = {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]}
        if training is True and training_forward.is_causal_lm(self.causal_lm):
            # `fit` gets the final hidden states: `compute_loss` projects only
            # the completion positions (4 of ~50 per row here), not the whole
            # 262,144-token vocabulary at every position.
            backbone = architecture.backbone(self.causal_lm)
            return {training_forward.HIDDEN_STATES: backbone(inputs, training=True)}
        return self.causal_lm(inputs, training=training)

    def _token_logprobs(self, y_pred, y, weights):
        if isinstance(y_pred, dict):
            return training_forward.weighted_token_logprobs(
                architecture.token_embedding(self.causal_lm),
                y_pred[training_forward.HIDDEN_STATES], y, weights)
        return token_logprobs(y_pred, y)

    def _reference_logprobs(self, x, y, weights, hidden):
        inputs = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
        if not hidden:
            return token_logprobs(reference_logits(self.causal_lm, inputs), y)
        with adapters_disabled(self.causal_lm, reset_compiled=False):
            states = architecture.backbone(self.causal_lm)(inputs, training=False)
            logprobs = self._token_logprobs({training_forward.HIDDEN_STATES: states}, y, weights)
        return ops.stop_gradient(logprobs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        recipe = self.recipe
        weights = ops.cast(sample_weight, "float32")
        logprobs = self._token_logprobs(y_pred, y, weights)
        old = x.get("old_logprobs")
        old = ops.stop_gradient(logprobs) if old is None else ops.cast(old, "float32")
        ratio = ops.exp(logprobs - old)
        advantages = ops.cast(x["advantages"], "float32")[:, None]
        surrogate = ops.minimum(ratio * advantages,
                                ops.clip(ratio, 1 - recipe.clip, 1 + recipe.clip) * advantages)
        per_token = -surrogate
        if recipe.beta:
            reference = self._reference_logprobs(x, y, weights, isinstance(y_pred, dict))
            log_ratio = reference - logprobs
            kl = ops.exp(log_ratio) - log_ratio - 1.0
            per_token = per_token + recipe.beta * kl
            count = ops.maximum(ops.sum(weights), 1.0)
            self.kl_tracker.update_state(ops.sum(kl * weights) / count)
        lengths = ops.maximum(ops.sum(weights, axis=-1), 1.0)
        return ops.mean(ops.sum(per_token * weights, axis=-1) / lengths)

    @property
    def metrics(self):
        return [*super().metrics, self.kl_tracker]

    def get_config(self):
        return {**super().get_config(),
                "causal_lm": keras.saving.serialize_keras_object(self.causal_lm),
                "recipe": self.recipe.get_config()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        causal_lm = keras.saving.deserialize_keras_object(config.pop("causal_lm"))
        return cls(causal_lm, recipe_from_config(config.pop("recipe")), **config)


class _OneBatch(keras.utils.PyDataset):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.batch


@register_recipe("grpo")
class GRPO(Recipe):
    """Group relative policy optimisation of the adapters of `base`.

    Args:
        reward_fns: callables `fn(records, completions) -> N floats`
            (`records`: the prompt record of each completion, each repeated
            G times; `completions`: decoded strings when the model has a
            tokenizer, else arrays of completion token ids), or
            `RewardScorer`s (scoring prompt + completion); rewards are summed.
            A name (`"part_of_speech"`) stands for a shipped reward and is
            kept in the config; callables are not: pass them again.
        group_size: completions per prompt, G >= 2.
        beta: weight of the KL to the reference (0 skips the reference pass).
        clip: the ratio clip epsilon.
        base: the adapter recipe that trains, or its config dict.
        max_new_tokens: completion length.
        temperature: sampling temperature.
        updates_per_rollout: fit epochs on each rollout batch.
        seed: sampling seed.
    """

    method = "grpo"

    def __init__(self, reward_fns: Sequence[Callable] = (), group_size=4, beta=0.04, clip=0.2,
                 base=None, max_new_tokens=16, temperature=1.0, updates_per_rollout=1, seed=0):
        if callable(reward_fns) or isinstance(reward_fns, str):
            reward_fns = [reward_fns]
        known = _reward_functions()
        unknown = [fn for fn in reward_fns if isinstance(fn, str) and fn not in known]
        if unknown:
            raise ValueError(f"Unknown reward name {unknown[0]!r}; named rewards are "
                             f"{sorted(known)}. Received: reward_fns={list(reward_fns)!r}")
        # Names are kept for get_config; callables and reward models are not serialisable.
        self.reward_names = [fn for fn in reward_fns if isinstance(fn, str)]
        self.reward_fns = [known[fn] if isinstance(fn, str) else fn for fn in reward_fns]
        bad = [fn for fn in self.reward_fns if not callable(fn)]
        if bad:
            raise ValueError(f"`reward_fns` must be callables. Received: {bad[0]!r}")
        for name, value, low in (("group_size", group_size, 2), ("max_new_tokens", max_new_tokens, 1),
                                 ("updates_per_rollout", updates_per_rollout, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an integer >= {low}. Received: {name}={value!r}")
        if not 0 < clip < 1:
            raise ValueError(f"`clip` must be in (0, 1). Received: clip={clip!r}")
        if beta < 0 or temperature <= 0:
            raise ValueError(
                f"`beta` must be >= 0 and `temperature` > 0. Received: beta={beta!r}, "
                f"temperature={temperature!r}"
            )
        base = base_recipe(base, "GRPO")
        self.group_size, self.beta, self.clip = group_size, float(beta), float(clip)
        self.base, self.max_new_tokens = base, max_new_tokens
        self.temperature, self.updates_per_rollout, self.seed = float(temperature), updates_per_rollout, seed

    def apply(self, model):
        """Applies `base` to the causal LM `model` and returns its `GRPOPolicy`."""
        return self._build(model, self.base.apply)

    def apply_for_loading(self, model):
        return self._build(model, self.base.apply_for_loading)

    def _build(self, model, apply_base):
        refusal = None
        if self.beta:
            refusal = (
                "GRPO's reference is the model with its adapters off, so `base` must add "
                f"adapters (or set beta=0). Received: base={self.base!r}"
            )
        return adapted_policy(model, apply_base, lambda lm: GRPOPolicy(lm, self), refusal)

    def compile(self, model, learning_rate=1e-4, **kwargs):
        """Compiles the `GRPOPolicy` (AdamW etc. as `Recipe.compile`; the loss is GRPO's)."""
        kwargs.setdefault("loss", None)
        kwargs.setdefault("weighted_metrics", None)
        return super().compile(model, learning_rate=learning_rate, **kwargs)

    def merge(self, model, batch=None, **options):
        return self.base.merge(getattr(model, "causal_lm", model), batch=batch, **options)

    # Rollouts -------------------------------------------------------------

    def _prompt_ids(self, causal_lm, records, template):
        if all("prompt_ids" in r for r in records):
            return [np.asarray(r["prompt_ids"], "int32") for r in records]
        tokenizer = _tokenizer(causal_lm)
        if tokenizer is None:
            raise ValueError("Prompt records need `prompt_ids` when the model has no tokenizer. "
                             f"Received: record keys {sorted(records[0])}")
        from kerasft.data.encoding import special_token_ids, tokenize_texts
        from kerasft.data.templates import get_template

        bos, _, _ = special_token_ids(tokenizer)
        texts = [get_template(template).render_prompt(r["prompt"]) for r in records]
        return [np.concatenate([[bos], ids]).astype("int32") for ids in tokenize_texts(tokenizer, texts)]

    def sample(self, policy, records, template="gemma", sampler=None, group_size=None):
        """Samples completions: `group_size` (default G) per record, grouped record by record.

        Returns:
            `{"token_ids", "padding_mask", "completion_mask", "records",
            "completions"}`: `[N, W + max_new_tokens]` arrays (prompts
            left-aligned, `W` the longest prompt rounded up to a multiple of
            16), the record of each row, and the decoded completions (token-id
            arrays when there is no tokenizer), each at most `max_new_tokens`
            tokens long.
        """
        import keras_hub

        causal_lm = policy.causal_lm
        group_size = self.group_size if group_size is None else group_size
        prompts = self._prompt_ids(causal_lm, records, template)
        # Widths rounded up to a multiple of 16: prompts of other lengths reuse
        # the compiled generate and train steps instead of tracing new ones.
        width = -(-max(len(p) for p in prompts) // 16) * 16 + self.max_new_tokens
        rows = [p for p in prompts for _ in range(group_size)]
        token_ids = np.zeros((len(rows), width), "int32")
        prompt_lengths = np.array([len(p) for p in rows])
        for i, p in enumerate(rows):
            token_ids[i, :len(p)] = p
        if sampler is None:
            # One sampler for the whole run: its seed state advances call after call.
            if getattr(self, "_sampler", None) is None:
                self._sampler = keras_hub.samplers.RandomSampler(
                    temperature=self.temperature, seed=self.seed)
            sampler = self._sampler
        if getattr(causal_lm, "sampler", None) is not sampler:
            # compile() drops the traced generate function: only when the sampler changes.
            causal_lm.compile(sampler=sampler)
        tokenizer = _tokenizer(causal_lm)
        stops = None if tokenizer is None else (tokenizer.end_token_id,)
        out = generate_token_ids(
            causal_lm, {"token_ids": token_ids,
                        "padding_mask": np.arange(width)[None] < prompt_lengths[:, None]},
            stop_token_ids=stops,
        )
        # The sampler fills every row to `width`: a row's completion is its
        # first `max_new_tokens` tokens (up to a stop token); the rest is padding.
        position = np.arange(width)[None]
        padding_mask = out["padding_mask"] & (position < prompt_lengths[:, None] + self.max_new_tokens)
        token_ids = np.where(padding_mask, out["token_ids"], 0).astype("int32")
        completion_mask = padding_mask & (position >= prompt_lengths[:, None])
        completions = []
        for i in range(len(rows)):
            ids = token_ids[i][completion_mask[i]]
            completions.append(ids if tokenizer is None
                               else decode_generated(tokenizer, ids, stop_token_ids=stops))
        return {"token_ids": token_ids, "padding_mask": padding_mask,
                "completion_mask": completion_mask,
                "records": [r for r in records for _ in range(group_size)],
                "completions": completions}

    def rewards(self, rollout) -> np.ndarray:
        """The summed reward of every completion of `rollout` (float32 `[N]`)."""
        if not self.reward_fns:
            raise ValueError("GRPO needs `reward_fns` to score completions. Received: reward_fns=[]")
        total = np.zeros(len(rollout["records"]), "float32")
        for fn in self.reward_fns:
            if hasattr(fn, "pair_margins"):  # a RewardScorer: scores prompt + completion
                values = ops.convert_to_numpy(fn({"token_ids": rollout["token_ids"],
                                                  "padding_mask": rollout["padding_mask"]}))
            else:
                values = fn(rollout["records"], rollout["completions"])
            values = np.asarray(values, "float32").reshape(-1)
            if values.shape != total.shape:
                raise ValueError(
                    f"A reward function must return one reward per completion ({total.size}). "
                    f"Received: {values.size} from {fn!r}"
                )
            total += values
        return total

    def rollout_batch(self, rollout, rewards):
        """`(x, y, sample_weight)` of a rollout for `GRPOPolicy.fit`."""
        ids, mask = rollout["token_ids"], rollout["padding_mask"]
        x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1],
             "advantages": group_advantages(rewards, self.group_size)}
        return x, ids[:, 1:], rollout["completion_mask"][:, 1:].astype("float32")

    def train(self, policy, records, steps: int, prompts_per_step: int = 2, template="gemma",
              verbose: int = 1) -> dict:
        """Runs `steps` GRPO steps: sample, score, one `fit` per step (its own Keras loop).

        Args:
            policy: the compiled `GRPOPolicy`.
            records: prompt records (`{"prompt": str, ...}` or
                `{"prompt_ids": [...], ...}`), cycled in order.
            steps: rollouts (each `prompts_per_step * group_size` completions).
            prompts_per_step: prompts per rollout.
            template: prompt template for `"prompt"` records.
            verbose: 1 prints a progress bar with the mean reward.

        Returns:
            `{"mean_reward": [per step], "loss": [...], "kl": [...],
            "sample_seconds": [...], "update_seconds": [...]}` (sampling and
            scoring; the `fit` update).
        """
        history = {"mean_reward": [], "loss": [], "kl": [], "sample_seconds": [],
                   "update_seconds": []}
        bar = keras.utils.Progbar(steps, stateful_metrics=["reward"]) if verbose else None
        for step in range(steps):
            chosen = [records[(step * prompts_per_step + i) % len(records)]
                      for i in range(prompts_per_step)]
            start = time.perf_counter()
            rollout = self.sample(policy, chosen, template)
            rewards = self.rewards(rollout)
            history["sample_seconds"].append(time.perf_counter() - start)
            start = time.perf_counter()
            batch = self.rollout_batch(rollout, rewards)
            if self.updates_per_rollout > 1:
                logits = policy(batch[0])
                batch[0]["old_logprobs"] = ops.convert_to_numpy(token_logprobs(logits, batch[1]))
            logs = policy.fit(_OneBatch(batch), epochs=self.updates_per_rollout, verbose=0,
                              shuffle=False).history
            history["update_seconds"].append(time.perf_counter() - start)
            history["mean_reward"].append(float(np.mean(rewards)))
            history["loss"].append(float(logs["loss"][-1]))
            history["kl"].append(float(logs["kl"][-1]) if "kl" in logs else 0.0)
            if bar is not None:
                bar.update(step + 1, values=[("reward", history["mean_reward"][-1]),
                                             ("loss", history["loss"][-1])])
        return history

    def mean_reward(self, policy, records, template="gemma", greedy=True) -> float:
        """Mean reward of one completion per record (greedy by default), for before/after."""
        import keras_hub

        sampler = keras_hub.samplers.GreedySampler() if greedy else None
        rollout = self.sample(policy, records, template, sampler=sampler, group_size=1)
        return float(np.mean(self.rewards(rollout)))

    def get_config(self):
        return {"method": self.method, "reward_fns": list(self.reward_names),
                "group_size": self.group_size, "beta": self.beta,
                "clip": self.clip, "base": self.base.get_config(),
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "updates_per_rollout": self.updates_per_rollout, "seed": self.seed}


def _tokenizer(causal_lm):
    preprocessor = getattr(causal_lm, "preprocessor", None)
    return None if preprocessor is None else preprocessor.tokenizer
