"""RewardModel: Bradley-Terry by hand, separable pairs reach accuracy 1.0, save / reload."""

import numpy as np
import pytest

from kerasft import testing
from kerasft.adapters import load_adapter, save_adapter
from kerasft.data.preference import PreferenceBatches
from kerasft.evaluate.preference import preference_accuracy
from kerasft.recipes import LoRA, recipe_from_config
from kerasft.recipes.reward_model import RewardModel, RewardScorer
from tests.conftest import to_numpy


def separable_pairs(pairs=8, batch_size=4, seed=0):
    """Chosen rows end in token 5, rejected rows in token 6; otherwise the same random tokens."""
    chosen = testing.random_token_batch(batch_size=pairs, sequence_length=8, seed=seed, pad_last=2)
    rejected = tuple(np.copy(a) if not isinstance(a, dict) else {k: np.copy(v) for k, v in a.items()}
                     for a in chosen)
    for (x, _, _), token in ((chosen, 5), (rejected, 6)):
        last = x["padding_mask"].sum(-1) - 1
        x["token_ids"][np.arange(pairs), last] = token
    return PreferenceBatches(chosen, rejected, batch_size=batch_size, shuffle=False)


def make_scorer(base=True, pooling="last_token"):
    recipe = RewardModel(base=LoRA(rank=4, alpha=8, targets=["query", "value"]) if base else None,
                         pooling=pooling)
    scorer = recipe.apply(testing.tiny_causal_lm("gemma3"))
    recipe.compile(scorer, learning_rate=3e-2)
    return recipe, scorer


def test_loss_equals_bradley_terry_by_hand():
    _, scorer = make_scorer()
    scorer.fit(separable_pairs(), epochs=1, verbose=0, shuffle=False)
    x, y, weights = separable_pairs()[0]
    rewards = to_numpy(scorer(x)).astype("float64")
    assert rewards.shape == (8,)
    expected = np.mean(np.log1p(np.exp(-(rewards[:4] - rewards[4:]))))
    loss = float(to_numpy(scorer.compute_loss(x, y, scorer(x), weights)))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_reward_is_the_head_on_the_pooled_last_token():
    _, scorer = make_scorer(base=False)
    x, _, _ = separable_pairs()[0]
    hidden = to_numpy(scorer.backbone(x))
    last = x["padding_mask"].sum(-1) - 1
    pooled = hidden[np.arange(8), last]
    kernel, bias = (to_numpy(w) for w in scorer.head.weights)
    np.testing.assert_allclose(to_numpy(scorer(x)), (pooled @ kernel + bias)[:, 0], atol=1e-5)
    assert [w.path for w in scorer.trainable_weights] == ["reward_head/kernel", "reward_head/bias"]


def test_separable_pairs_reach_accuracy_one_and_reload_exactly(tmp_path):
    recipe, scorer = make_scorer()
    held_out = separable_pairs(seed=7)
    before = preference_accuracy(scorer, held_out, progress=False)
    history = scorer.fit(separable_pairs(), epochs=10, verbose=0, shuffle=False).history
    assert history["loss"][-1] < history["loss"][0]
    assert history["reward_accuracy"][-1] == 1.0
    after = preference_accuracy(scorer, held_out, progress=False)
    # The small random head may already order the pairs; training widens the margin.
    assert after["accuracy"] == 1.0 and after["mean_margin"] > before["mean_margin"] + 1.0
    save_adapter(scorer, tmp_path / "reward")
    reloaded = load_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "reward")
    assert isinstance(reloaded, RewardScorer)
    x, _, _ = held_out[0]
    np.testing.assert_allclose(to_numpy(reloaded(x)), to_numpy(scorer(x)), atol=1e-6)
    merged = recipe.merge(scorer, batch=x)
    assert merged["merged"] and merged["max_abs_logit_difference"] < 1e-4


def test_config_round_trip_and_bad_arguments():
    recipe = RewardModel(base=LoRA(rank=2), pooling="mean", seed=3)
    assert recipe_from_config(recipe.get_config()).get_config() == recipe.get_config()
    with pytest.raises(ValueError, match="pooling="):
        RewardModel(pooling="max")
    with pytest.raises(ValueError, match="base="):
        RewardModel(base="lora")
