"""Packed batches carry segment ids, and every consumer runs them per document.

A packed row must train, evaluate and score exactly as its examples one per
row (token-mean loss, perplexity, logits), and differently from the same row
with whole-row attention (cross-talk); consumers that cannot read the segment
ids refuse them instead of dropping them.
"""

import json
import pathlib

import keras
import keras_hub
import numpy as np
import pytest

from kerasft import evaluate, finetune, pretokenized, testing, training_forward
from kerasft.data import (
    SequenceBatches,
    instruction_batches,
    load_wordnet,
    pack_examples,
    pack_token_stream,
    packed_text_batches,
    tokenize_texts,
)
from kerasft.data.encoding import encode_instruction_examples
from kerasft.data.general_text import load_general_text, with_replay
from kerasft.losses import TokenNormalizedBatches
from kerasft.recipes import LoRA
from tests.conftest import to_numpy

LENGTH = 127
DOCS = ["The quick brown fox.", "To be, or not to be.", "Hello there.", "A dog is an animal."]
CONFIG = pathlib.Path(__file__).parents[2] / "recipes" / "configs" / "sft_lora.yaml"


@pytest.fixture(scope="module")
def records():
    # Short WordNet definitions (33-59 tiny-tokenizer tokens): 2-3 fit in a row of 128.
    return [r for r in load_wordnet("validation") if len(r["response"]) < 40][:12]


def _batches(records, tokenizer, pack, cross_attention=False, batch_size=64):
    """All `records` in one batch (one optimizer step), rows in a fixed order."""
    return instruction_batches(records, tokenizer, sequence_length=LENGTH, batch_size=batch_size,
                               shuffle=False, pack=pack, cross_attention=cross_attention)


def _model(kind):
    """A tiny causal LM over the tiny tokenizer's 512 pieces.

    The tiny Gemma 3 gets a sliding window longer than a row, so that
    cross-talk would reach the responses (windows inside documents:
    tests/models/test_segments.py).
    """
    if kind == "gemma":
        return testing.tiny_causal_lm("gemma", vocabulary_size=512)
    backbone = testing.tiny_gemma3_backbone(vocabulary_size=512, sliding_window_size=2 * LENGTH)
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def _trained_once(kind, batches):
    """`(reported loss, trained weights)` after one SGD step of a LoRA on `batches`."""
    model = _model(kind)
    recipe = LoRA(rank=2, alpha=4)
    recipe.apply(model)
    # One logits chunk for the whole batch: a smaller graph to compile (chunking: test_training_forward.py).
    recipe.compile(model, optimizer=keras.optimizers.SGD(0.5), logits_chunk_size=2048)
    history = model.fit(batches, epochs=1, verbose=0)
    return history.history["loss"][0], [to_numpy(v) for v in model.trainable_variables]


def test_instruction_batches_pack_carries_the_packers_segment_ids(tokenizer, records):
    packed = _batches(records, tokenizer, pack=True, batch_size=2)
    examples = encode_instruction_examples(records, tokenizer, template="gemma",
                                           sequence_length=LENGTH)
    ids, weights, lengths, segment_ids = pack_examples(examples, LENGTH, return_segment_ids=True)
    assert len(ids) < len(records)  # several examples share a row
    x, y, w = packed.as_arrays()
    np.testing.assert_array_equal(x["segment_ids"], segment_ids[:, :-1])
    np.testing.assert_array_equal(x["token_ids"], ids[:, :-1])
    assert x["segment_ids"].dtype == np.int32 and x["segment_ids"].max() >= 2
    for index in range(len(packed)):  # every batch holds its rows' segment ids
        batch_x = packed[index][0]
        np.testing.assert_array_equal(batch_x["segment_ids"],
                                      segment_ids[2 * index:2 * index + 2, :-1])
    assert packed.has_segment_ids
    assert not _batches(records, tokenizer, pack=False).has_segment_ids
    assert "segment_ids" not in _batches(records, tokenizer, True, cross_attention=True)[0][0]
    with pytest.raises(ValueError, match="cross_attention=True, pack=False"):
        _batches(records, tokenizer, pack=False, cross_attention=True)
    with pytest.raises(ValueError, match="pack='yes'"):
        _batches(records, tokenizer, pack="yes")


def test_select_as_arrays_rows_and_repr_keep_segment_ids(tokenizer, records):
    packed = _batches(records, tokenizer, pack=True, batch_size=2)
    x, y, w = packed.as_arrays()
    subset = packed.select([2, 0])
    sub_x, sub_y, sub_w = subset.as_arrays()
    np.testing.assert_array_equal(sub_x["segment_ids"], x["segment_ids"][[2, 0]])
    np.testing.assert_array_equal(subset[0][0]["segment_ids"], x["segment_ids"][[2, 0]])
    # `rows()` inverts the constructor exactly.
    ids, weights, lengths, segment_ids = packed.rows()
    again = SequenceBatches(ids, weights, lengths, batch_size=2, segment_ids=segment_ids).as_arrays()
    for key in x:
        np.testing.assert_array_equal(again[0][key], x[key])
    np.testing.assert_array_equal(again[1], y)
    np.testing.assert_array_equal(again[2], w)
    assert "segment_ids=True" in repr(packed)
    assert "segment_ids" not in repr(_batches(records, tokenizer, pack=False))
    with pytest.raises(ValueError, match="segment_ids of shape"):
        SequenceBatches(ids, weights, lengths, batch_size=2, segment_ids=segment_ids[:, :-1])


def test_packed_text_batches_carry_segment_ids_but_bos_per_row_rows_do_not(tokenizer):
    documents = [np.concatenate([[2], ids, [1]]) for ids in tokenize_texts(tokenizer, DOCS)]
    ids, weights, lengths, segment_ids = pack_token_stream(documents, 9, return_segment_ids=True)
    x, y, w = packed_text_batches(DOCS, tokenizer, sequence_length=9, shuffle=False).as_arrays()
    np.testing.assert_array_equal(x["segment_ids"], segment_ids[:, :-1])
    np.testing.assert_array_equal(w, weights[:, 1:])
    assert x["segment_ids"].max() >= 2
    plain = packed_text_batches(DOCS, tokenizer, sequence_length=9, shuffle=False,
                                cross_attention=True).as_arrays()
    assert "segment_ids" not in plain[0]
    # Whole-row attention trains on the BOS after an EOS; per document, it is no label.
    assert plain[2].sum() > w.sum()
    # The forgetting reference's rows (BOS first) stay as they were: no segment ids.
    reference = packed_text_batches(DOCS, tokenizer, sequence_length=9, shuffle=False,
                                    bos_per_row=True)
    assert not reference.has_segment_ids
    stream = np.concatenate(documents)
    old = pack_token_stream([stream], 9, row_start_id=2)
    np.testing.assert_array_equal(reference.as_arrays()[1], old[0][:, 1:])
    np.testing.assert_array_equal(reference.as_arrays()[2], old[1][:, 1:])
    with pytest.raises(ValueError, match="bos_per_row=True, cross_attention=False"):
        packed_text_batches(DOCS, tokenizer, sequence_length=9, bos_per_row=True,
                            cross_attention=False)


def test_a_fit_step_on_packed_rows_equals_the_unpacked_step(model_kind, tokenizer, records):
    unpacked = _batches(records, tokenizer, pack=False)
    packed = _batches(records, tokenizer, pack=True)
    cross = _batches(records, tokenizer, pack=True, cross_attention=True)
    assert packed.num_examples < unpacked.num_examples and len(packed) == len(unpacked) == 1
    loss, weights = _trained_once(model_kind, unpacked)
    packed_loss, packed_weights = _trained_once(model_kind, packed)
    cross_loss, cross_weights = _trained_once(model_kind, cross)
    # Token-mean loss over the same response tokens, each seeing only its own example.
    np.testing.assert_allclose(packed_loss, loss, rtol=1e-5)
    for got, want in zip(packed_weights, weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Whole-row attention lets the later examples of a row see the earlier ones.
    assert abs(cross_loss - loss) > 1e-4 * abs(loss)
    assert max(np.abs(a - b).max() for a, b in zip(cross_weights, weights)) > 1e-5


def test_evaluate_perplexity_and_predict_on_packed_rows_equal_unpacked(tokenizer, records):
    # One model kind: both run packed rows alike (tests/models/test_segments.py).
    model_kind = "gemma3"
    unpacked = _batches(records, tokenizer, pack=False)
    packed = _batches(records, tokenizer, pack=True)
    cross = _batches(records, tokenizer, pack=True, cross_attention=True)
    model = _model(model_kind)
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:  # away from the initialisation's symmetries
        variable.assign(to_numpy(variable) + rng.normal(0, 0.05, variable.shape).astype("float32"))
    # perplexity runs the backbone itself: per document on any model, compiled or not.
    want = evaluate.perplexity(model, unpacked, progress=False)
    got = evaluate.perplexity(model, packed, progress=False)
    assert got["tokens"] == want["tokens"]
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    cross_talk = evaluate.perplexity(model, cross, progress=False)["loss"]
    assert abs(cross_talk - want["loss"]) > 1e-4 * want["loss"]
    # evaluate / predict: through kerasft's compile (kerasft.training_forward).
    recipe = LoRA(rank=2)
    model = _model(model_kind)
    recipe.apply(model)
    recipe.compile(model)
    assert training_forward.is_installed(model)
    loss = model.evaluate(unpacked, verbose=0)[0]
    np.testing.assert_allclose(model.evaluate(packed, verbose=0)[0], loss, rtol=1e-5)
    assert abs(model.evaluate(cross, verbose=0)[0] - loss) > 1e-4 * loss
    logits, packed_logits = model.predict(unpacked, verbose=0), model.predict(packed, verbose=0)
    alone = {}
    ux = unpacked.as_arrays()[0]
    for row, mask in zip(range(len(ux["token_ids"])), ux["padding_mask"]):
        alone[tuple(ux["token_ids"][row][mask])] = logits[row][mask]
    px = packed.as_arrays()[0]
    compared = 0
    for row in range(len(px["token_ids"])):
        for segment in range(1, px["segment_ids"][row].max() + 1):
            where = px["segment_ids"][row] == segment
            example = tuple(px["token_ids"][row][where])
            if example in alone:  # the last example of a full row may end past the window
                np.testing.assert_allclose(packed_logits[row][where], alone[example], atol=1e-4)
                compared += 1
    assert compared >= len(records) - packed.num_examples


def test_models_that_would_drop_the_segment_ids_refuse_them(tokenizer, records):
    packed = _batches(records, tokenizer, pack=True, batch_size=4)
    model = _model("gemma3")
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=r"x\['segment_ids'\].*Gemma3CausalLM without kerasft"):
        model.fit(packed, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="`validation_data` holds packed rows"):
        model.fit(_batches(records, tokenizer, pack=False), validation_data=packed, verbose=0)
    with pytest.raises(ValueError, match="packed rows"):  # gradient accumulation wraps them
        model.fit(TokenNormalizedBatches(packed, 2), verbose=0)
    with pytest.raises(ValueError, match="packed rows"):
        model.predict(packed, verbose=0)
    with pretokenized(model), pytest.raises(ValueError, match="packed rows"):
        model.predict(packed[0][0], verbose=0)
    # Whole-row attention batches are what this model reads: accepted.
    history = model.fit(_batches(records, tokenizer, pack=True, cross_attention=True), verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_replay_keeps_the_segment_ids_of_task_and_replay_rows(tokenizer, records):
    texts = load_general_text("replay")[:40]
    for pack in (False, True):
        task = _batches(records, tokenizer, pack=pack, batch_size=2)
        mixed = with_replay(task, tokenizer, 0.25, texts=texts, seed=0)
        x = mixed.as_arrays()[0]
        task_x = task.as_arrays()[0]
        n, count = task.num_examples, round(task.num_examples / 3)
        assert mixed.num_examples == n + count
        # Unpacked task rows are one sequence each: segment 1 on their real tokens.
        want = task_x["segment_ids"] if pack else task_x["padding_mask"].astype("int32")
        np.testing.assert_array_equal(x["segment_ids"][:n], want)
        general = packed_text_batches(texts, tokenizer, sequence_length=LENGTH, batch_size=1,
                                      shuffle=False)
        chosen = np.sort(np.random.default_rng(0).choice(general.num_examples, count, replace=False))
        np.testing.assert_array_equal(x["segment_ids"][n:],
                                      general.as_arrays()[0]["segment_ids"][chosen])


def test_the_main_job_config_takes_pack_as_a_bool_only():
    assert finetune.load_config(CONFIG)["data"]["pack"] is False  # the shipped default, for now
    assert finetune.load_config(CONFIG, ["data.pack=true"])["data"]["pack"] is True
    with pytest.raises(ValueError, match=r"`data.pack` must be true or false.*data.pack=3"):
        finetune.load_config(CONFIG, ["data.pack=3"])


# A whole tiny main-job run (~25 s under JAX on a contended 2-core machine).
@pytest.mark.slow
def test_the_main_job_packs_when_asked_and_scores_unpacked_rows(tmp_path, monkeypatch):
    from kerasft import data
    from tests.test_finetune import tiny_overrides

    calls = []

    def recording(records, tokenizer, **kwargs):
        calls.append((len(records), kwargs.get("pack", False), kwargs["shuffle"]))
        return instruction_batches(records, tokenizer, **kwargs)

    monkeypatch.setattr(data, "instruction_batches", recording)
    overrides = [*tiny_overrides(CONFIG, tmp_path), "training.learning_rate=0.01",
                 "data.sequence_length=128", "data.pack=true"]
    finetune.main(["--config", str(CONFIG), *sum((["--set", o] for o in overrides), [])])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The 8 training examples share rows; training runs per document and learns.
    assert saved["training"]["rows"] < 8
    assert saved["after"]["perplexity"] < saved["before"]["perplexity"]
    # Only the (shuffled) training batches are packed; the held-out words are
    # scored one per row, before and after training.
    assert (8, True, True) in calls
    assert all(not pack for count, pack, shuffle in calls if (count, shuffle) != (8, True))
    assert sum(count == 4 and not pack for count, pack, _ in calls) >= 2


def test_model_logits_runs_packed_rows_per_document(tokenizer, records):
    packed = _batches(records, tokenizer, pack=True, batch_size=64)
    model = _model("gemma3")
    x = packed[0][0]
    logits = evaluate.model_logits(model, packed[0])
    first = x["segment_ids"][0] == 1  # a row's first example sees nothing before it
    alone = {"token_ids": x["token_ids"][:1, first], "padding_mask": x["padding_mask"][:1, first]}
    np.testing.assert_allclose(logits[0, first], to_numpy(model(alone))[0], atol=1e-5)
    second = x["segment_ids"][0] == 2
    alone = {"token_ids": x["token_ids"][:1, second], "padding_mask": x["padding_mask"][:1, second]}
    np.testing.assert_allclose(logits[0, second], to_numpy(model(alone))[0], atol=1e-4)
    plain = evaluate.model_logits(model, {k: x[k] for k in ("token_ids", "padding_mask")})
    assert np.abs(plain[0, second] - logits[0, second]).max() > 1e-3
