"""DPO (sigmoid, IPO) and SimPO on a tiny Gemma 3: formulas by hand, reference = base, no copy."""

import math

import keras
import numpy as np
import pytest

from kerasft import testing
from kerasft.adapters import load_adapter, read_adapter_config, save_adapter
from kerasft.data.preference import PreferenceBatches
from kerasft.evaluate.preference import preference_accuracy, preference_margins
from kerasft.recipes import LoRA
from kerasft.recipes.preference import DPO, SimPO, reference_logits
from tests.conftest import to_numpy

PROMPT_LENGTH = 4
TARGETS = ("query", "value", "ffw_linear")


def pair_batches(pairs=4, batch_size=4):
    """Random chosen/rejected rows sharing a 4-token prompt; loss weights on the rest."""
    chosen = testing.random_token_batch(batch_size=pairs, sequence_length=10, seed=1)
    rejected = testing.random_token_batch(batch_size=pairs, sequence_length=10, seed=2)
    rejected[0]["token_ids"][:, :PROMPT_LENGTH] = chosen[0]["token_ids"][:, :PROMPT_LENGTH]
    for _, _, weights in (chosen, rejected):
        weights[:, : PROMPT_LENGTH - 1] = 0.0
    return PreferenceBatches(chosen, rejected, batch_size=batch_size, shuffle=False)


def numpy_logprobs(logits, y, weights):
    """Summed and counted response log-probabilities, in float64 numpy."""
    logits = np.asarray(logits, "float64")
    log_softmax = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                         keepdims=True)) - logits.max(-1, keepdims=True)
    token = np.take_along_axis(log_softmax, y[..., None].astype(int), -1)[..., 0]
    return (token * weights).sum(-1), np.maximum(weights.sum(-1), 1.0)


def make_policy(recipe_cls=DPO, **kwargs):
    causal_lm = testing.tiny_causal_lm("gemma3")
    recipe = recipe_cls(base=LoRA(rank=4, alpha=8, targets=TARGETS), **kwargs)
    policy = recipe.apply(causal_lm)
    recipe.compile(policy, learning_rate=1e-2)
    return recipe, policy


def batch_loss(policy, batch):
    x, y, weights = batch
    return float(to_numpy(policy.compute_loss(x, y, policy(x), weights)))


def test_dpo_at_initialisation_has_loss_log_2_and_zero_margin():
    _, policy = make_policy()
    batch = pair_batches()[0]
    assert batch_loss(policy, batch) == pytest.approx(math.log(2), abs=1e-7)
    x, y, weights = batch
    losses, margins = policy.pair_terms(x, y, policy(x), weights)
    np.testing.assert_array_equal(to_numpy(margins), 0.0)
    np.testing.assert_array_equal(to_numpy(losses), np.float32(math.log(2)))
    # Evaluated in one traced call, policy and reference may round differently (~1e-7).
    margins = preference_margins(policy, pair_batches(), progress=False)
    assert np.abs(margins).max() < 1e-5


def train_a_little(policy, steps=3):
    policy.fit(pair_batches(), epochs=steps, verbose=0, shuffle=False)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_loss_equals_the_formula_by_hand(loss):
    recipe, policy = make_policy(beta=0.5, loss=loss)
    train_a_little(policy)
    x, y, weights = pair_batches()[0]
    fresh = testing.tiny_causal_lm("gemma3")
    policy_sum, count = numpy_logprobs(to_numpy(policy(x)), y, weights)
    reference_sum, _ = numpy_logprobs(to_numpy(fresh(x)), y, weights)
    if loss == "ipo":
        policy_sum, reference_sum = policy_sum / count, reference_sum / count
    ratio = policy_sum - reference_sum
    h = ratio[:4] - ratio[4:]
    expected = (np.mean(np.log1p(np.exp(-0.5 * h))) if loss == "sigmoid"
                else np.mean((h - 1 / (2 * 0.5)) ** 2))
    assert abs(h).max() > 1e-3  # the adapter moved: not the trivial start
    assert batch_loss(policy, (x, y, weights)) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def logits_gradient(policy, x, y, weights):
    """d loss / d policy logits, by the backend's autodiff."""
    logits = policy(x)
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.grad(lambda l: policy.compute_loss(x, y, l, weights))(logits))
    import torch

    logits = logits.detach().requires_grad_(True)
    policy.compute_loss(x, y, logits, weights).backward()
    return logits.grad.cpu().numpy()


def test_dpo_gradient_equals_the_formula_by_hand():
    beta = 0.5
    _, policy = make_policy(beta=beta)
    train_a_little(policy)
    x, y, weights = pair_batches()[0]
    logits = to_numpy(policy(x)).astype("float64")
    fresh = testing.tiny_causal_lm("gemma3")
    policy_sum, _ = numpy_logprobs(logits, y, weights)
    reference_sum, _ = numpy_logprobs(to_numpy(fresh(x)), y, weights)
    ratio = policy_sum - reference_sum
    h = ratio[:4] - ratio[4:]
    # dL/dh_i = -beta * sigmoid(-beta h_i) / B; h is +log pi(chosen) - log pi(rejected).
    d_h = -beta / (1 + np.exp(beta * h)) / 4
    d_row = np.concatenate([d_h, -d_h])
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    one_hot = np.eye(logits.shape[-1])[y]
    expected = d_row[:, None, None] * weights[..., None] * (one_hot - softmax)
    np.testing.assert_allclose(logits_gradient(policy, x, y, weights), expected, atol=2e-6)


def test_reference_log_probs_equal_the_base_model_and_no_weights_are_copied():
    recipe, policy = make_policy()
    base = testing.tiny_causal_lm("gemma3")
    base_count = len(base.weights)
    train_a_little(policy)
    x, _, _ = pair_batches()[0]
    np.testing.assert_allclose(to_numpy(reference_logits(policy.causal_lm, x)), to_numpy(base(x)),
                               atol=1e-5)
    assert np.abs(to_numpy(policy(x)) - to_numpy(base(x))).max() > 1e-3
    # The policy holds the base weights once, plus A and B of each LoRA target.
    lora = [w for w in policy.weights if "lora" in w.path]
    assert len(policy.weights) == base_count + len(lora)
    assert len(lora) == 2 * len(TARGETS) * base.backbone.num_layers
    assert sum(int(np.prod(w.shape)) for w in policy.weights if "lora" not in w.path) == sum(
        int(np.prod(w.shape)) for w in base.weights)


def test_training_raises_the_reward_margin_and_saves_a_lora_adapter(tmp_path):
    recipe, policy = make_policy()
    history = policy.fit(pair_batches(), epochs=6, verbose=0, shuffle=False).history
    assert history["loss"][-1] < math.log(2) - 0.05
    assert history["reward_accuracy"][-1] == 1.0
    assert preference_accuracy(policy, pair_batches(), progress=False)["accuracy"] == 1.0
    save_adapter(policy, tmp_path / "adapter")
    assert read_adapter_config(tmp_path / "adapter")["method"] == "lora"
    reloaded = load_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "adapter")
    x, _, _ = pair_batches()[0]
    np.testing.assert_allclose(to_numpy(reloaded(x)), to_numpy(policy(x)), atol=1e-5)
    merged = recipe.merge(policy, batch=x)
    assert merged["merged"] and merged["max_abs_logit_difference"] < 1e-4


def test_simpo_loss_equals_the_formula_by_hand_and_needs_no_reference():
    beta, gamma = 2.0, 0.5
    recipe, policy = make_policy(SimPO, beta=beta, gamma=gamma)
    assert not recipe.needs_reference
    train_a_little(policy, steps=2)
    x, y, weights = pair_batches()[0]
    total, count = numpy_logprobs(to_numpy(policy(x)), y, weights)
    mean = total / count
    expected = np.mean(np.log1p(np.exp(-(beta * (mean[:4] - mean[4:]) - gamma))))
    assert batch_loss(policy, (x, y, weights)) == pytest.approx(expected, rel=1e-4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="loss="):
        DPO(loss="hinge", base=LoRA())
    with pytest.raises(ValueError, match="beta="):
        DPO(beta=0, base=LoRA())
    with pytest.raises(ValueError, match="base="):
        DPO(base=None)
    from kerasft.recipes import Freeze

    with pytest.raises(ValueError, match="adapters"):
        DPO(base=Freeze()).apply(testing.tiny_causal_lm("gemma3"))


def test_config_round_trip():
    from kerasft.recipes import recipe_from_config

    recipe = DPO(beta=0.2, loss="ipo", base=LoRA(rank=2))
    assert recipe_from_config(recipe.get_config()).get_config() == recipe.get_config()
