"""evaluate.preference_accuracy: margins of a causal LM, a DPO policy and a reward model."""

import numpy as np
import pytest

from kerasft import testing
from kerasft.data.preference import PreferenceBatches
from kerasft.evaluate.preference import preference_accuracy, preference_margins
from kerasft.recipes.reward_model import RewardModel
from tests.conftest import to_numpy


def pairs():
    chosen = testing.random_token_batch(batch_size=6, sequence_length=8, seed=1)
    rejected = testing.random_token_batch(batch_size=6, sequence_length=8, seed=2)
    return PreferenceBatches(chosen, rejected, batch_size=4, shuffle=False)  # batches of 4 and 2


def test_causal_lm_margin_is_the_response_log_likelihood_difference():
    model = testing.tiny_causal_lm("gemma3")
    batches = pairs()
    x, y, weights = batches.as_arrays()
    logits = to_numpy(model(x)).astype("float64")
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total = (np.take_along_axis(log_softmax, y[..., None], -1)[..., 0] * weights).sum(-1)
    expected = total[:6] - total[6:]
    np.testing.assert_allclose(preference_margins(model, batches, progress=False), expected,
                               rtol=1e-4, atol=1e-4)
    scores = preference_accuracy(model, batches, progress=False)
    assert scores["pairs"] == 6 and scores["accuracy"] == pytest.approx(np.mean(expected > 0))


def test_ties_count_half_and_reward_model_margins_are_reward_differences():
    class Tied:  # a scorer whose margins are exactly 0
        def pair_margins(self, x, y=None, sample_weight=None):
            return np.zeros(len(x["token_ids"]) // 2, "float32")

        def __call__(self, x):
            return np.zeros(len(x["token_ids"]), "float32")

    assert preference_accuracy(Tied(), pairs(), progress=False) == {
        "accuracy": 0.5, "mean_margin": 0.0, "ties": 6, "pairs": 6}
    scorer = RewardModel(base=None, seed=1).apply(testing.tiny_causal_lm("gemma3"))
    x, _, _ = pairs().as_arrays()
    rewards = to_numpy(scorer(x))
    np.testing.assert_allclose(preference_margins(scorer, pairs(), progress=False),
                               rewards[:6] - rewards[6:], atol=1e-6)


def test_no_batches_is_an_error():
    class Empty:
        def __len__(self):
            return 0

    with pytest.raises(ValueError, match="0 batches"):
        preference_accuracy(testing.tiny_causal_lm("gemma3"), Empty())
