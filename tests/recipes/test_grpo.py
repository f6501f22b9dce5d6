"""GRPO on a tiny Gemma 3: group advantages, the loss by hand, a reward that prefers tokens rises."""

import keras
import numpy as np
import pytest

from kerasft import testing
from kerasft.recipes import LoRA
from kerasft.recipes.grpo import GRPO, group_advantages
from tests.conftest import to_numpy

LOW_TOKENS = 48  # the reward prefers token ids below this (about half the vocabulary)
PROMPTS = [{"prompt_ids": [2, 5, 9]}, {"prompt_ids": [2, 6, 9]}]


def low_token_reward(records, completions):
    return [float(np.mean(np.asarray(c) < LOW_TOKENS)) if len(c) else 0.0 for c in completions]


def make(beta=0.0, **kwargs):
    kwargs.setdefault("max_new_tokens", 1)
    recipe = GRPO([low_token_reward], group_size=8, beta=beta,
                  base=LoRA(rank=4, alpha=8, targets="all-linear"), **kwargs)
    policy = recipe.apply(testing.tiny_causal_lm("gemma3"))
    recipe.compile(policy, learning_rate=5e-2)
    return recipe, policy


def test_advantages_are_zero_for_equal_rewards_and_normalised_otherwise():
    rewards = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 3.0]
    advantages = group_advantages(rewards, 4)
    np.testing.assert_array_equal(advantages[:4], 0.0)
    expected = (np.array([0, 1, 2, 3]) - 1.5) / (np.std([0, 1, 2, 3], ddof=1) + 1e-4)
    np.testing.assert_allclose(advantages[4:], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="group_size=3"):
        group_advantages(rewards, 3)


def expected_low_mass(policy):
    """The exact mean reward of a one-token completion: the probability of a low token."""
    x = {"token_ids": np.array([p["prompt_ids"] for p in PROMPTS], "int32"),
         "padding_mask": np.ones((2, 3), bool)}
    probabilities = to_numpy(keras.ops.softmax(policy(x)[:, -1]))
    return probabilities[:, :LOW_TOKENS].sum(-1)


def test_a_reward_preferring_some_tokens_rises_in_a_few_steps():
    recipe, policy = make()
    before = expected_low_mass(policy)
    history = recipe.train(policy, PROMPTS, steps=16, prompts_per_step=2, verbose=0)
    after = expected_low_mass(policy)
    assert len(history["mean_reward"]) == 16
    assert np.all(after > before + 0.03), (before, after)
    assert np.mean(after) > np.mean(before) + 0.04, (before, after)


def test_every_completion_has_at_most_max_new_tokens_whatever_its_prompt_length():
    recipe, policy = make(max_new_tokens=2)
    prompts = [{"prompt_ids": [2, 5, 9]}, {"prompt_ids": [2, 5, 9, 11, 12, 13, 14, 15, 16]}]
    rollout = recipe.sample(policy, prompts, group_size=2)
    assert rollout["token_ids"].shape == (4, 16 + 2)  # the prompt width rounded up to 16
    np.testing.assert_array_equal(rollout["completion_mask"].sum(1), [2, 2, 2, 2])
    np.testing.assert_array_equal(rollout["padding_mask"].sum(1), [5, 5, 11, 11])
    assert all(len(c) == 2 for c in rollout["completions"])
    np.testing.assert_array_equal(rollout["token_ids"][~rollout["padding_mask"]], 0)


def test_loss_equals_the_clipped_objective_with_kl_by_hand():
    beta, clip = 0.1, 0.2
    recipe, policy = make(beta=beta, clip=clip, max_new_tokens=3)
    rollout = recipe.sample(policy, PROMPTS)
    rewards = np.arange(16, dtype="float32") % 3  # unequal within each group
    x, y, weights = recipe.rollout_batch(rollout, rewards)
    recipe.train(policy, PROMPTS, steps=2, prompts_per_step=2, verbose=0)  # adapters move
    base = testing.tiny_causal_lm("gemma3")
    inputs = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}

    def logprobs(logits):
        logits = np.asarray(logits, "float64")
        shifted = logits - logits.max(-1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        return np.take_along_axis(log_softmax, y[..., None].astype(int), -1)[..., 0]

    policy_lp = logprobs(to_numpy(policy(inputs)))
    reference_lp = logprobs(to_numpy(base(inputs)))
    old_lp = policy_lp - 0.3 * (np.arange(policy_lp.size).reshape(policy_lp.shape) % 2)
    x["old_logprobs"] = old_lp.astype("float32")
    ratio = np.exp(policy_lp - old_lp)
    a = x["advantages"][:, None].astype("float64")
    surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - clip, 1 + clip) * a)
    q = reference_lp - policy_lp
    per_token = -(surrogate - beta * (np.exp(q) - q - 1))
    expected = np.mean((per_token * weights).sum(-1) / np.maximum(weights.sum(-1), 1))
    assert abs(q).max() > 1e-4 and np.any(np.abs(ratio - 1) > clip)
    loss = float(to_numpy(policy.compute_loss(x, y, policy(inputs), weights)))
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # `fit`'s path: hidden states, logits only at the completion positions.
    hidden = policy(inputs, training=True)
    assert set(hidden) == {"hidden_states"}
    loss = float(to_numpy(policy.compute_loss(x, y, hidden, weights)))
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="group_size="):
        GRPO([low_token_reward], group_size=1, base=LoRA())
    with pytest.raises(ValueError, match="clip="):
        GRPO([low_token_reward], clip=1.5, base=LoRA())
    with pytest.raises(ValueError, match="base="):
        GRPO([low_token_reward])
    recipe, policy = make()
    with pytest.raises(ValueError, match="one reward per completion"):
        GRPO([lambda records, completions: [0.0]], base=LoRA()).rewards(
            recipe.sample(policy, PROMPTS))
