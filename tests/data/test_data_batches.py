import keras
import numpy as np
import pytest

from kerasft.data import (
    SequenceBatches,
    instruction_arrays,
    instruction_batches,
    load_wordnet,
    tokenize_texts,
)

DOG = [{"prompt": "Define the word dog.", "response": "A dog."}]


def pieces(tokenizer, ids):
    return [tokenizer.id_to_token(int(i)) for i in ids]


def test_tokenizer_special_ids(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.end_token_id, tokenizer.start_token_id) == (0, 1, 2)
    assert tokenizer.token_to_id("<start_of_turn>") == 4
    assert tokenizer.token_to_id("<end_of_turn>") == 5


def test_gemma_example_position_by_position(tokenizer):
    x, y, sample_weight = instruction_arrays(DOG, tokenizer, sequence_length=20)
    # BOS, 13 prompt tokens, 4 response tokens (incl. <end_of_turn>), EOS = 19 tokens.
    assert pieces(tokenizer, x["token_ids"][0]) == [
        "<bos>", "<start_of_turn>", "user", "\n", "Define", "▁the", "▁word", "▁dog", ".",
        "<end_of_turn>", "\n", "<start_of_turn>", "model", "\n",
        "A", "▁dog", ".", "<end_of_turn>", "<eos>", "<pad>",
    ]  # fmt: skip
    np.testing.assert_array_equal(
        x["token_ids"][0],
        [2, 4, 386, 6, 319, 268, 298, 296, 473, 5, 6, 4, 400, 6, 488, 296, 473, 5, 1, 0],
    )
    np.testing.assert_array_equal(x["padding_mask"][0], [True] * 19 + [False])
    np.testing.assert_array_equal(
        y[0], [4, 386, 6, 319, 268, 298, 296, 473, 5, 6, 4, 400, 6, 488, 296, 473, 5, 1, 0, 0]
    )
    # y[0..12] are prompt tokens, y[13..17] = "A", "▁dog", ".", <end_of_turn>, <eos>.
    np.testing.assert_array_equal(sample_weight[0], [0.0] * 13 + [1.0] * 5 + [0.0] * 2)
    assert x["token_ids"].dtype == np.int32 and y.dtype == np.int32
    assert x["padding_mask"].dtype == bool and sample_weight.dtype == np.float32


def test_instruction_template_example(tokenizer):
    records = [{"prompt": "Say hello.", "response": "Hello there."}]
    x, y, sample_weight = instruction_arrays(
        records, tokenizer, template="instruction", sequence_length=14
    )
    assert pieces(tokenizer, x["token_ids"][0]) == [
        "<bos>", "Instruction", ":", "▁Say", "▁hello", ".", "\n", "Response", ":", "▁",
        "Hello", "▁there", ".", "<eos>",
    ]  # fmt: skip
    # Exactly T + 1 = 15 tokens fit: y ends with the token after the window (pad).
    np.testing.assert_array_equal(y[0, -5:], [317, 422, 473, 1, 0])
    np.testing.assert_array_equal(sample_weight[0], [0.0] * 9 + [1.0] * 4 + [0.0])
    np.testing.assert_array_equal(x["padding_mask"][0], [True] * 14)


def test_y_is_x_shifted_and_weights_cover_responses(tokenizer):
    records = load_wordnet("validation")[:64]
    batches = instruction_batches(records, tokenizer, sequence_length=160, batch_size=16)
    x, y, sample_weight = batches.as_arrays()
    np.testing.assert_array_equal(y[:, :-1], x["token_ids"][:, 1:])
    assert np.all(x["token_ids"][~x["padding_mask"]] == 0)
    assert np.all(sample_weight[y == 0] == 0.0)
    # Weight count per row = response tokens + EOS.
    response_ids = tokenize_texts(tokenizer, [r["response"] + "<end_of_turn>" for r in records])
    np.testing.assert_array_equal(sample_weight.sum(1), [len(r) + 1 for r in response_ids])
    # Every weighted label is followed only by weighted labels or padding.
    for row in range(len(y)):
        first = np.argmax(sample_weight[row])
        last = int(sample_weight[row].sum()) + first
        assert np.all(sample_weight[row, first:last] == 1.0)
        assert y[row, last - 1] == 1  # EOS is the last target.


def test_truncate_response(tokenizer):
    records = DOG + [{"prompt": "Define the word dog.", "response": "A dog is an animal that barks."}]
    # Record 1: BOS + 13 prompt + 9 response ("A ▁dog ▁is ▁an ▁animal ▁that ▁barks . <end_of_turn>") + EOS.
    with pytest.raises(ValueError, match=r"Record 1 has 24 tokens .* sequence_length=18"):
        instruction_arrays(records, tokenizer, sequence_length=18)
    x, y, sample_weight = instruction_arrays(
        records, tokenizer, sequence_length=18, truncate="response"
    )
    # 19 tokens fit: BOS + 13 prompt + 5 response tokens, EOS dropped.
    assert pieces(tokenizer, x["token_ids"][1, 14:]) == ["A", "▁dog", "▁is", "▁an"]
    assert pieces(tokenizer, y[1, 13:]) == ["A", "▁dog", "▁is", "▁an", "▁animal"]
    np.testing.assert_array_equal(sample_weight[1], [0.0] * 13 + [1.0] * 5)
    np.testing.assert_array_equal(x["padding_mask"][1], [True] * 18)
    # Record 0 fits exactly (19 tokens) and keeps its EOS as the last label.
    assert y[0, -1] == tokenizer.end_token_id
    np.testing.assert_array_equal(sample_weight[0], [0.0] * 13 + [1.0] * 5)


def test_prompt_too_long_even_with_truncation(tokenizer):
    with pytest.raises(ValueError, match="Record 0 has 19 tokens"):
        instruction_arrays(DOG, tokenizer, sequence_length=12, truncate="response")


def test_empty_records(tokenizer):
    with pytest.raises(ValueError, match="0 elements"):
        instruction_batches([], tokenizer, sequence_length=16)


def test_missing_key_names_key_and_keys_present(tokenizer):
    records = DOG + [{"prompt": "Say hello.", "answer": "Hello."}]
    with pytest.raises(KeyError, match=r"Record 1 has no key 'response'.*\['answer', 'prompt'\]"):
        instruction_batches(records, tokenizer, sequence_length=32)


def test_custom_keys(tokenizer):
    renamed = [{"question": "Define the word dog.", "answer": "A dog."}]
    expected = instruction_arrays(DOG, tokenizer, sequence_length=20)
    got = instruction_arrays(
        renamed, tokenizer, sequence_length=20, prompt_key="question", response_key="answer"
    )
    for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(got)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sequence_length": 0}, "sequence_length=0"),
        ({"sequence_length": 32, "batch_size": 0}, "batch_size=0"),
        ({"sequence_length": 32, "truncate": "left"}, "truncate='left'"),
        ({"sequence_length": 32, "template": "nope"}, "template='nope'"),
        ({"sequence_length": 32, "batch_size": 4, "drop_remainder": True}, "batch_size=4"),
    ],
)
def test_bad_arguments_name_the_value(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        instruction_batches(DOG, tokenizer, **kwargs)


def test_non_string_field(tokenizer):
    with pytest.raises(TypeError, match="response=3"):
        instruction_batches([{"prompt": "a", "response": 3}], tokenizer, sequence_length=16)


def _rows(batches, epoch):
    batches.set_epoch(epoch)
    first_tokens = [batch[0]["token_ids"] for batch in batches]
    return np.concatenate(first_tokens)


def test_shuffling_is_deterministic_and_changes_per_epoch(tokenizer):
    records = load_wordnet("validation")[:50]
    batches = instruction_batches(records, tokenizer, sequence_length=160, batch_size=8, seed=3)
    assert isinstance(batches, keras.utils.PyDataset) and isinstance(batches, SequenceBatches)
    assert len(batches) == 7 and batches.num_batches == 7
    assert [len(b[1]) for b in batches] == [8] * 6 + [2]
    again = instruction_batches(records, tokenizer, sequence_length=160, batch_size=8, seed=3)
    other_seed = instruction_batches(records, tokenizer, sequence_length=160, batch_size=8, seed=4)
    unshuffled = batches.as_arrays()[0]["token_ids"]

    epoch0, epoch1 = _rows(batches, 0), _rows(batches, 1)
    np.testing.assert_array_equal(epoch0, _rows(again, 0))
    np.testing.assert_array_equal(epoch1, _rows(again, 1))
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(epoch0, _rows(other_seed, 0))
    assert not np.array_equal(epoch0, unshuffled)
    # Each epoch is a permutation of all rows.
    for epoch in (epoch0, epoch1):
        assert sorted(map(bytes, epoch)) == sorted(map(bytes, unshuffled))
    # on_epoch_end advances to the next epoch's order.
    batches.set_epoch(0)
    batches.on_epoch_end()
    np.testing.assert_array_equal(np.concatenate([b[0]["token_ids"] for b in batches]), epoch1)


def test_no_shuffle_and_drop_remainder(tokenizer):
    records = load_wordnet("validation")[:10]
    batches = instruction_batches(
        records, tokenizer, sequence_length=160, batch_size=4, shuffle=False, drop_remainder=True
    )
    assert len(batches) == 2
    x_all = batches.as_arrays()[0]["token_ids"]
    np.testing.assert_array_equal(batches[1][0]["token_ids"], x_all[4:8])
    np.testing.assert_array_equal(batches[-1][0]["token_ids"], x_all[4:8])
    with pytest.raises(IndexError, match="index=2"):
        batches[2]


def test_fit_on_tiny_gemma3(tokenizer):
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        image_size=16,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
        vision_encoder=None,
    )
    model = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    batches = instruction_batches(
        load_wordnet("validation")[:8], tokenizer, sequence_length=64, batch_size=4,
        truncate="response",
    )  # fmt: skip
    # keras-hub's Task.fit slices anything but tf.data/grain with tf.data;
    # kerasft routes its batch objects to Keras's own fit instead.
    history = model.fit(batches, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert losses[1] < losses[0]
    assert batches.epoch >= 2  # Keras called on_epoch_end: a new order each epoch.


def test_select_keeps_the_batching_over_the_chosen_rows():
    from kerasft.data import SequenceBatches

    ids = np.arange(10 * 5, dtype="int32").reshape(10, 5)
    batches = SequenceBatches(ids, np.ones((10, 5)), np.full(10, 5), batch_size=2, seed=4)
    subset = batches.select([7, 1, 3, 9])
    x, y, w = subset.as_arrays()
    np.testing.assert_array_equal(x["token_ids"], ids[[7, 1, 3, 9], :-1])
    np.testing.assert_array_equal(y, ids[[7, 1, 3, 9], 1:])
    assert (subset.batch_size, subset.seed, subset.shuffle, len(subset)) == (2, 4, True, 2)
    first = np.concatenate([subset[i][0]["token_ids"] for i in range(2)])
    order = np.random.default_rng([4, 0]).permutation(4)
    np.testing.assert_array_equal(first, x["token_ids"][order])
    assert batches.num_examples == 10  # the original is unchanged
    with pytest.raises(ValueError, match=r"Received: rows=\[10\]"):
        batches.select([10])


def test_keras_hub_lm_with_a_preprocessor_fits_sequence_batches(tokenizer):
    """The documented path: `model.fit(batches)`, no block, no `keras.Model.fit`."""
    import keras_hub

    import kerasft

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), image_size=16, num_layers=1,
        num_query_heads=2, num_key_value_heads=1, hidden_dim=16, intermediate_dim=32,
        head_dim=8, vision_encoder=None,
    )  # fmt: skip
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer, sequence_length=64)
    model = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    batches = instruction_batches(
        load_wordnet("validation")[:8], tokenizer, sequence_length=64, batch_size=4,
        truncate="response",
    )  # fmt: skip
    history = model.fit(batches, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert model.preprocessor is preprocessor
    # The same batches inside the explicit block (kept for arrays) still work.
    with kerasft.pretokenized(model):
        assert np.all(np.isfinite(model.evaluate(batches, verbose=0)))
