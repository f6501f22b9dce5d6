"""Continuing a saved adapter: training picks up at the saved loss; retention against gain."""

import pytest

import kerasft
from kerasft import evaluate, testing
from kerasft.continual import continue_adapter, retention_and_gain, task_perplexities
from kerasft.history import TrainingHistory
from kerasft.recipes import LoRA


def _fit(model, batch, epochs, tmp_path):
    LoRA(rank=2).compile(model, learning_rate=2e-2)
    history = TrainingHistory(tmp_path, plot=False, tensorboard=False)
    x, y, w = batch
    model.fit(x, y, sample_weight=w, batch_size=len(y), epochs=epochs, shuffle=False, verbose=0,
              callbacks=[history])
    return [step["batch_loss"] for step in history.steps]


def test_a_continued_adapter_starts_where_it_ended(tmp_path):
    old, new = testing.random_token_batch(seed=1), testing.random_token_batch(seed=2)
    model = LoRA(rank=2).apply(testing.tiny_causal_lm("gemma3"))
    first = _fit(model, old, 4, tmp_path / "first")
    end_loss = evaluate.perplexity(model, [old], progress=False)["loss"]
    kerasft.save_adapter(model, tmp_path / "adapter")
    held_out = {"old": [old], "new": [new]}
    before = task_perplexities(model, held_out)

    continued = continue_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "adapter", method="lora")
    assert len(continued.trainable_weights) == len(model.trainable_weights)
    again = _fit(continued, old, 1, tmp_path / "again")
    # The continued run's first loss is the saved model's, not a fresh LoRA's (the base's).
    assert again[0] == pytest.approx(end_loss, rel=1e-5)
    assert first[0] != pytest.approx(end_loss, rel=1e-3)

    later = continue_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "adapter")
    _fit(later, new, 4, tmp_path / "new")
    after = task_perplexities(later, held_out)
    report = retention_and_gain(before, after)
    assert report["gain"] == before["new"] / after["new"] > 1.0
    assert report["retention"] == before["old"] / after["old"]
    with pytest.raises(ValueError, match="method='dora'"):
        continue_adapter(testing.tiny_causal_lm("gemma3"), tmp_path / "adapter", method="dora")
