import numpy as np
import pytest

from kerasft.data import (
    instruction_arrays,
    instruction_batches,
    load_shakespeare,
    load_wordnet,
    pack_examples,
    pack_token_stream,
    packed_text_batches,
    tokenize_texts,
)

DOCS = ["The quick brown fox.", "To be, or not to be.", "Hello there.", "A dog is an animal."]


def full_rows(x, y):
    """The T + 1 tokens of each row: first input token, then all labels."""
    return np.concatenate([x["token_ids"][:, :1], y], axis=1)


def expected_stream(tokenizer, docs):
    return np.concatenate(
        [np.concatenate([[2], ids, [1]]) for ids in tokenize_texts(tokenizer, docs)]
    )


@pytest.mark.parametrize("sequence_length", [7, 9, 12])
def test_packed_text_keeps_every_token_once(tokenizer, sequence_length):
    stream = expected_stream(tokenizer, DOCS)  # 5 + 8 + 3 + 6 tokens + 4 BOS + 4 EOS = 30
    assert len(stream) == 30
    # Whole-row attention: every token but a row's first is a label (with
    # segment ids, the default, a document's first is not: test_packed_batches.py).
    batches = packed_text_batches(
        DOCS, tokenizer, sequence_length=sequence_length, batch_size=2, shuffle=False,
        cross_attention=True,
    )
    x, y, sample_weight = batches.as_arrays()
    width = sequence_length + 1
    assert len(y) == -(-30 // width)
    rows = full_rows(x, y)
    real = [row[: 1 + int(w.sum())] for row, w in zip(rows, sample_weight)]
    np.testing.assert_array_equal(np.concatenate(real), stream)
    # All labels weigh 1 except the padding of the last row.
    leftover = 30 % width
    np.testing.assert_array_equal(sample_weight[:-1], 1.0)
    expected_last = [1.0] * (leftover - 1 if leftover else sequence_length)
    expected_last += [0.0] * (sequence_length - len(expected_last))
    np.testing.assert_array_equal(sample_weight[-1], expected_last)
    np.testing.assert_array_equal(y[:, :-1], x["token_ids"][:, 1:])
    assert np.all(x["padding_mask"][:-1])
    np.testing.assert_array_equal(x["padding_mask"][-1], np.arange(sequence_length) < (leftover or width))


def test_packed_text_drop_remainder(tokenizer):
    stream = expected_stream(tokenizer, DOCS)
    x, y, sample_weight = packed_text_batches(
        DOCS, tokenizer, sequence_length=6, batch_size=2, shuffle=False, remainder="drop",
        cross_attention=True,
    ).as_arrays()
    # 30 tokens -> 4 rows of 7, the last 2 tokens dropped.
    np.testing.assert_array_equal(full_rows(x, y).reshape(-1), stream[:28])
    np.testing.assert_array_equal(sample_weight, 1.0)
    assert x["padding_mask"].all()


def test_packed_text_errors(tokenizer):
    with pytest.raises(ValueError, match="0 elements"):
        packed_text_batches([], tokenizer, sequence_length=8)
    with pytest.raises(ValueError, match="remainder='keep'"):
        packed_text_batches(DOCS, tokenizer, sequence_length=8, remainder="keep")
    with pytest.raises(ValueError, match="30 tokens"):
        packed_text_batches(DOCS, tokenizer, sequence_length=64, remainder="drop")
    with pytest.raises(ValueError, match="single string"):
        packed_text_batches("one document", tokenizer, sequence_length=8)


def test_packed_text_from_records(tokenizer):
    records = [{"text": t} for t in DOCS]
    a = packed_text_batches(records, tokenizer, sequence_length=8, shuffle=False).as_arrays()
    b = packed_text_batches(DOCS, tokenizer, sequence_length=8, shuffle=False).as_arrays()
    np.testing.assert_array_equal(a[1], b[1])


def test_shakespeare_packs_all_tokens(tokenizer):
    plays = load_shakespeare("test")
    batches = packed_text_batches(plays, tokenizer, sequence_length=256, batch_size=8, seed=1)
    x, y, sample_weight = batches.as_arrays()
    stream = expected_stream(tokenizer, plays)
    assert len(y) == -(-len(stream) // 257)
    real = full_rows(x, y).reshape(-1)[: len(stream)]
    np.testing.assert_array_equal(real, stream)
    # The first token of each row is input only, and so is each play's BOS (with
    # segment ids nothing of its own play precedes it) unless it opens a row.
    starts = np.cumsum([0] + [len(t) + 2 for t in tokenize_texts(tokenizer, plays)][:-1])
    assert sample_weight.sum() == len(stream) - len(y) - np.count_nonzero(starts % 257)


def test_pack_examples_best_fit():
    def example(n, start):
        ids = np.arange(start, start + n, dtype="int32")
        return ids, np.ones(n, "float32")

    examples = [example(5, 10), example(3, 20), example(4, 30), example(2, 40)]
    ids, weights, lengths = pack_examples(examples, sequence_length=7)
    # Width 8: [5 + 3], [4 + 2 + pad 2].
    np.testing.assert_array_equal(ids[0], [10, 11, 12, 13, 14, 20, 21, 22])
    np.testing.assert_array_equal(ids[1], [30, 31, 32, 33, 40, 41, 0, 0])
    np.testing.assert_array_equal(lengths, [8, 6])
    np.testing.assert_array_equal(weights[1], [1, 1, 1, 1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="Example 0 has 5 tokens"):
        pack_examples(examples, sequence_length=3)


def test_pack_token_stream_exact_multiple():
    ids, weights, lengths = pack_token_stream([np.arange(1, 7), np.arange(7, 13)], sequence_length=3)
    np.testing.assert_array_equal(ids, np.arange(1, 13).reshape(3, 4))
    np.testing.assert_array_equal(lengths, [4, 4, 4])
    assert weights.min() == 1.0


def _split_examples(row_ids, row_weights, bos_id=2):
    """Cuts a packed row back into examples at each BOS."""
    starts = list(np.flatnonzero(row_ids == bos_id)) + [len(row_ids)]
    return [
        (tuple(row_ids[a:b]), tuple(row_weights[a:b])) for a, b in zip(starts[:-1], starts[1:])
    ]


def test_instruction_packing_keeps_examples_and_masks(tokenizer):
    records = load_wordnet("validation")[:40]
    unpacked = instruction_batches(records, tokenizer, sequence_length=160, shuffle=False)
    packed = instruction_batches(records, tokenizer, sequence_length=160, pack=True, seed=5)
    assert packed.num_examples < unpacked.num_examples

    def examples_of(batches):
        x, y, sample_weight = batches.as_arrays()
        rows = full_rows(x, y)
        weights = np.concatenate([np.zeros_like(sample_weight[:, :1]), sample_weight], axis=1)
        found = []
        for row, w in zip(rows, weights):
            n = int(np.count_nonzero(row))  # Pad id 0 only after the real tokens.
            assert np.all(row[n:] == 0) and np.all(w[n:] == 0)
            found += _split_examples(row[:n], w[:n])
        return sorted(found)

    assert examples_of(packed) == examples_of(unpacked)
    assert packed.num_target_tokens == unpacked.num_target_tokens
    # No label crosses into the next example with weight: a label that is a BOS weighs 0.
    x, y, sample_weight = packed.as_arrays()
    assert np.all(sample_weight[y == 2] == 0.0)


def test_instruction_packing_is_deterministic(tokenizer):
    records = load_wordnet("validation")[:40]
    a = instruction_arrays(records, tokenizer, sequence_length=160, pack=True, seed=5)
    b = instruction_arrays(records, tokenizer, sequence_length=160, pack=True, seed=5)
    np.testing.assert_array_equal(a[0]["token_ids"], b[0]["token_ids"])


def test_pack_examples_segment_ids_number_the_examples_of_each_row():
    examples = [(np.arange(1, 4), np.ones(3)), (np.arange(4, 6), np.ones(2)), (np.arange(6, 10), np.ones(4))]
    ids, weights, lengths, segment_ids = pack_examples(examples, 5, return_segment_ids=True)
    np.testing.assert_array_equal(segment_ids, [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    plain = pack_examples(examples, 5)
    for got, want in zip((ids, weights, lengths), plain):
        np.testing.assert_array_equal(got, want)


def test_pack_token_stream_segment_ids_and_no_cross_document_target():
    documents = [np.arange(1, 5), np.arange(5, 8), np.arange(8, 14)]
    ids, weights, lengths, segment_ids = pack_token_stream(documents, 4, return_segment_ids=True)
    np.testing.assert_array_equal(ids, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 0, 0]])
    np.testing.assert_array_equal(segment_ids, [[1, 1, 1, 1, 2], [1, 1, 2, 2, 2], [1, 1, 1, 0, 0]])
    # Tokens 5 and 8 start documents: nothing in their own document predicts them.
    np.testing.assert_array_equal(
        weights, [[0, 1, 1, 1, 0], [1, 1, 0, 1, 1], [1, 1, 1, 0, 0]]
    )
    np.testing.assert_array_equal(lengths, [5, 5, 3])


def test_pack_token_stream_row_start_puts_bos_first_and_scores_every_token_once():
    stream = [np.array([2, 10, 11, 12, 1]), np.array([2, 13, 14, 1])]
    ids, weights, lengths = pack_token_stream(stream, sequence_length=3, row_start_id=2)
    np.testing.assert_array_equal(ids, [[2, 2, 10, 11], [2, 12, 1, 2], [2, 13, 14, 1]])
    np.testing.assert_array_equal(lengths, [4, 4, 4])
    # Labels are positions 1..T: every stream token once, but a document's own
    # BOS right after the row's BOS is no target.
    np.testing.assert_array_equal(weights[:, 1:], [[0, 1, 1], [1, 1, 1], [1, 1, 1]])
    ids, weights, lengths = pack_token_stream(stream, sequence_length=4, row_start_id=2)
    np.testing.assert_array_equal(ids, [[2, 2, 10, 11, 12], [2, 1, 2, 13, 14], [2, 1, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [5, 5, 2])
    np.testing.assert_array_equal(weights[2, 1:], [1, 0, 0, 0])
    assert pack_token_stream(stream, 4, row_start_id=2, remainder="drop")[0].shape == (2, 5)
    with pytest.raises(ValueError, match="row_start_id=2, return_segment_ids=True"):
        pack_token_stream(stream, 4, row_start_id=2, return_segment_ids=True)


def test_packed_text_bos_per_row_starts_every_row_with_bos(tokenizer):
    batches = packed_text_batches(DOCS, tokenizer, sequence_length=7, batch_size=2, shuffle=False,
                                  bos_per_row=True)
    x, y, w = batches.as_arrays()
    assert (x["token_ids"][:, 0] == 2).all()
    labels = y[w > 0]
    stream = expected_stream(tokenizer, DOCS)
    # Every stream token is a label once, but a document's BOS that opens a row.
    expected = [t for i, t in enumerate(stream) if not (i % 7 == 0 and t == 2)]
    assert stream[0] == 2 and len(expected) < len(stream)
    np.testing.assert_array_equal(labels, expected)
