"""Forgetting: 1.0 against itself, > 1 after training on unrelated data, lower with replay."""

import keras
import numpy as np
import pytest

from kerasft import data, evaluate, pretokenized
from kerasft.data.general_text import load_general_text, load_probes, with_replay
from kerasft.evaluate.forgetting import ForgettingMonitor, forgetting, reference_batches
from kerasft.finetune.models import load_model
from kerasft.recipes import LoRA

LENGTH = 32
SMALL = {"sequence_length": LENGTH, "max_characters": 3000, "probes": load_probes()[:6]}


def _task_batches(tokenizer):
    records = data.sample_records(data.load_wordnet("train"), 48, seed=0)
    return data.instruction_batches(records, tokenizer, template="gemma", sequence_length=LENGTH,
                                    batch_size=8, seed=0, truncate="response")


def _unrelated_batches(tokenizer):
    """48 rows of uniformly random tokens: nothing like the general text."""
    ids = np.random.default_rng(0).integers(3, tokenizer.vocabulary_size(), (48, LENGTH + 1))
    return data.SequenceBatches(ids, np.ones(ids.shape, "float32"), np.full(48, LENGTH + 1),
                                batch_size=8, seed=0)


@pytest.fixture(scope="module")
def pretrained():
    """The tiny model after a little pre-training on general text (the replay split)."""
    model = load_model("tiny", sequence_length=LENGTH)
    # cross_attention=True: the plainly compiled model reads no segment ids (pretokenized refuses them).
    batches = data.packed_text_batches(load_general_text("replay")[:6], model.preprocessor.tokenizer,
                                       sequence_length=LENGTH, batch_size=8, seed=0,
                                       cross_attention=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), weighted_metrics=[])
    with pretokenized(model):
        model.fit(batches.select(range(min(64, batches.num_examples))), epochs=2, verbose=0)
    return model


def _weights(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def _tuned(pretrained, replay_fraction):
    model = load_model("tiny", sequence_length=LENGTH)
    for variable, value in zip(model.weights, _weights(pretrained)):
        variable.assign(value)
    tokenizer = model.preprocessor.tokenizer
    batches = _unrelated_batches(tokenizer)
    if replay_fraction:
        batches = with_replay(batches, tokenizer, replay_fraction, seed=0)
    recipe = LoRA(rank=4)
    model = recipe.apply(model)
    recipe.compile(model, learning_rate=3e-2, total_steps=3 * len(batches))
    with pretokenized(model):
        model.fit(batches, epochs=3, verbose=0)
    return model


def test_against_itself_the_ratio_is_one(pretrained):
    result = forgetting(pretrained, **SMALL)  # no adapters: the base is the model itself
    assert result["ratio"] == 1.0 and result["probe_loss_ratio"] == 1.0
    assert 0.0 <= result["probe_accuracy"] <= 1.0
    again = forgetting(pretrained, base=pretrained, **SMALL)
    assert again["ratio"] == 1.0
    adapted = LoRA(rank=2).apply(load_model("tiny", sequence_length=LENGTH))
    assert forgetting(adapted, **SMALL)["ratio"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow  # two LoRA runs and four forgetting measurements: ~2.5 min on 2 busy cores
def test_training_on_unrelated_data_forgets_and_replay_forgets_less(pretrained):
    tokenizer = pretrained.preprocessor.tokenizer
    reference = reference_batches(tokenizer, sequence_length=LENGTH, max_characters=3000)
    base = evaluate.perplexity(pretrained, reference, progress=False)["perplexity"]
    plain = _tuned(pretrained, 0.0)
    result = forgetting(plain, **SMALL)
    # The base is the same weights with the adapters off (a stale trace would give ratio 1).
    assert result["base"]["perplexity"] == pytest.approx(base, rel=1e-5)
    assert result["perplexity"] == pytest.approx(
        evaluate.perplexity(plain, reference, progress=False)["perplexity"], rel=1e-5)
    assert result["ratio"] > 1.05
    replayed = forgetting(_tuned(pretrained, 0.5), **SMALL)
    assert replayed["base"]["perplexity"] == pytest.approx(base, rel=1e-5)
    assert 1.0 <= replayed["ratio"] < result["ratio"]
    print(f"forgetting ratio without replay {result['ratio']:.3f}, with 50% replay "
          f"{replayed['ratio']:.3f}")


def test_replay_mixes_the_asked_share_of_rows():
    tokenizer = load_model("tiny").preprocessor.tokenizer
    batches = _task_batches(tokenizer)
    mixed = with_replay(batches, tokenizer, 0.25, seed=0)
    assert mixed.num_examples == 48 + 16
    x, y, w = mixed.as_arrays()
    task_x, task_y, task_w = batches.as_arrays()
    np.testing.assert_array_equal(y[:48], task_y)
    np.testing.assert_array_equal(w[:48], task_w)
    # Replay rows are packed general text: every real token is trained on but a
    # document's first (its BOS, id 2: nothing of its own document precedes it).
    np.testing.assert_array_equal(w[48:], (x["padding_mask"][48:] & (y[48:] != 2)).astype("float32"))
    assert with_replay(batches, tokenizer, 0.0) is batches
    with pytest.raises(ValueError, match="fraction=1"):
        with_replay(batches, tokenizer, 1)


def test_monitor_logs_the_ratio_and_stops_past_the_threshold(pretrained):
    model = load_model("tiny", sequence_length=LENGTH)
    for variable, value in zip(model.weights, _weights(pretrained)):
        variable.assign(value)
    recipe = LoRA(rank=4)
    model = recipe.apply(model)
    recipe.compile(model, learning_rate=3e-2)
    tokenizer = model.preprocessor.tokenizer
    monitor = ForgettingMonitor(threshold=1.0 + 1e-9, action="stop", tokenizer=tokenizer, **SMALL)
    with pretokenized(model):  # detaches the preprocessor: the monitor holds the tokenizer
        history = model.fit(_unrelated_batches(tokenizer), epochs=3, verbose=0,
                            callbacks=[monitor])
    assert len(history.history["forgetting_ratio"]) == 1  # stopped after the first epoch
    assert history.history["forgetting_ratio"][0] == monitor.ratios[0] > 1.0
    assert monitor.ratios[0] == pytest.approx(forgetting(model, **SMALL)["ratio"], rel=1e-6)
    with pytest.raises(ValueError, match="action='halt'"):
        ForgettingMonitor(action="halt")


def test_reference_rows_each_start_with_bos(pretrained):
    tokenizer = pretrained.preprocessor.tokenizer
    x, y, weights = reference_batches(tokenizer, sequence_length=LENGTH, max_characters=3000).as_arrays()
    assert len(x["token_ids"]) > 2
    assert (x["token_ids"][:, 0] == tokenizer.start_token_id).all()
