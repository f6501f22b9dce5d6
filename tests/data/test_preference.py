"""data.preference_batches: pair layout, response-only weights, pairs kept together, shipped sets."""

import numpy as np
import pytest

from kerasft.data import instruction_arrays
from kerasft.data.preference import (
    load_wordnet_pos,
    load_wordnet_preference,
    part_of_speech_reward,
    preference_batches,
)
from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

RECORDS = [{"prompt": f"Define the word w{i}.", "chosen": "a small animal " * (i % 3 + 1),
            "rejected": f"the color {i}"} for i in range(5)]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_gemma_tokenizer()


def test_rows_are_the_instruction_encoding_of_chosen_then_rejected(tokenizer):
    batches = preference_batches(RECORDS, tokenizer, sequence_length=32, batch_size=5,
                                 shuffle=False)
    x, y, weights = batches[0]
    assert x["token_ids"].shape == (10, 32) and len(batches) == 1
    for key, rows in (("chosen", slice(0, 5)), ("rejected", slice(5, 10))):
        records = [{"prompt": r["prompt"], "response": r[key]} for r in RECORDS]
        ex, ey, ew = instruction_arrays(records, tokenizer, sequence_length=32)
        np.testing.assert_array_equal(x["token_ids"][rows], ex["token_ids"])
        np.testing.assert_array_equal(y[rows], ey)
        np.testing.assert_array_equal(weights[rows], ew)
    # Prompts are shared and unweighted: each pair's first weighted label sits at the same place.
    first = np.argmax(weights > 0, axis=1)
    np.testing.assert_array_equal(first[:5], first[5:])
    np.testing.assert_array_equal(x["token_ids"][:5, : first[0]], x["token_ids"][5:, : first[0]])


def test_shuffling_moves_pairs_together_and_differs_per_epoch(tokenizer):
    batches = preference_batches(RECORDS, tokenizer, sequence_length=32, batch_size=5, seed=3)
    ordered = preference_batches(RECORDS, tokenizer, sequence_length=32, batch_size=5,
                                 shuffle=False)[0][0]["token_ids"]
    first = batches[0][0]["token_ids"]
    batches.on_epoch_end()
    second = batches[0][0]["token_ids"]
    assert not np.array_equal(first, second)
    for rows in (first, second):
        for i in range(5):
            index = next(j for j in range(5) if np.array_equal(ordered[j], rows[i]))
            np.testing.assert_array_equal(rows[5 + i], ordered[5 + index])


def test_missing_keys_and_bad_sizes_are_named(tokenizer):
    with pytest.raises(KeyError, match="rejected"):
        preference_batches([{"prompt": "p", "chosen": "c"}], tokenizer)
    with pytest.raises(ValueError, match="sequence_length="):
        preference_batches(RECORDS, tokenizer, sequence_length=0)
    with pytest.raises(ValueError, match="0 elements"):
        preference_batches([], tokenizer)


def test_shipped_sets_are_split_by_headword():
    words = {split: {r["word"].lower() for r in load_wordnet_preference(split)}
             for split in ("train", "validation", "test")}
    assert [len(words[s]) for s in ("train", "validation", "test")] == [4000, 500, 500]
    assert not words["train"] & words["test"] and not words["train"] & words["validation"]
    pairs = load_wordnet_preference("test")
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    prompts = load_wordnet_pos("train")
    assert sorted({p["pos"] for p in prompts}) == ["adjective", "adverb", "noun", "verb"]
    assert not {p["word"].lower() for p in prompts} & words["test"]


def test_shipped_pos_prompts_are_balanced_few_shot_completions():
    for split, per_pos in (("train", 500), ("validation", 13), ("test", 18)):
        prompts = load_wordnet_pos(split)
        counts = {pos: sum(p["pos"] == pos for p in prompts)
                  for pos in ("noun", "verb", "adjective", "adverb")}
        assert counts == dict.fromkeys(counts, per_pos), split
        assert all(p["prompt"].endswith(f"\n{p['word']}:") for p in prompts)
    held_out = {p["word"] for s in ("validation", "test") for p in load_wordnet_pos(s)}
    assert not {"house", "run", "happy", "quickly"} & held_out  # the prompt's own examples


def test_part_of_speech_reward_reads_the_first_word():
    records = [{"pos": "noun"}, {"pos": "verb"}, {"pos": "adverb"}, {"pos": "noun"}]
    completions = ["Noun.", "It is a verb", "adverb", ""]
    assert part_of_speech_reward(records, completions) == [1.0, 0.0, 1.0, 0.0]
