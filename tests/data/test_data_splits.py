import pytest

from kerasft.data import train_validation_split


def make_records():
    # 30 words with 1, 2 or 3 senses each: 60 records.
    return [
        {"word": f"w{i:02d}", "sense": s} for i in range(30) for s in range(1 + i % 3)
    ]


def test_split_by_key_has_no_overlap_and_covers_everything():
    records = make_records()
    assert len(records) == 60
    train, validation = train_validation_split(records, 0.2, seed=0, key="word")
    assert not {r["word"] for r in train} & {r["word"] for r in validation}
    assert len(train) + len(validation) == 60
    assert 12 <= len(validation) <= 14  # >= round(0.2 * 60), overshoot < one group.
    # Input order is kept inside each split.
    assert train == [r for r in records if r in train]
    assert validation == [r for r in records if r in validation]


def test_split_is_deterministic_and_seeded():
    records = make_records()
    a = train_validation_split(records, 0.2, seed=0, key="word")
    assert a == train_validation_split(records, 0.2, seed=0, key="word")
    assert a != train_validation_split(records, 0.2, seed=1, key="word")
    # Independent of the input order of the records.
    reversed_split = train_validation_split(records[::-1], 0.2, seed=0, key="word")
    assert sorted(map(str, reversed_split[1])) == sorted(map(str, a[1]))


def test_split_without_key_and_with_callable_key():
    records = list(range(100))
    train, validation = train_validation_split(records, 0.1, seed=3)
    assert len(validation) == 10 and len(train) == 90
    assert sorted(train + validation) == records
    train, validation = train_validation_split(records, 0.25, seed=3, key=lambda r: r // 10)
    assert len(validation) == 30  # Three groups of 10: 25 rounded up to whole groups.
    assert not {r // 10 for r in train} & {r // 10 for r in validation}


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.1"])
def test_bad_fraction_names_the_value(fraction):
    with pytest.raises(ValueError, match="validation_fraction="):
        train_validation_split([1, 2, 3], fraction)


def test_split_errors():
    with pytest.raises(ValueError, match="0 records"):
        train_validation_split([], 0.5)
    with pytest.raises(ValueError, match="1 groups"):
        train_validation_split([{"w": "a"}, {"w": "a"}], 0.5, key="w")
    with pytest.raises(KeyError, match=r"Record 1 has no key 'word'.*\['headword'\]"):
        train_validation_split([{"word": "a"}, {"headword": "b"}], 0.5, key="word")


def test_sample_records_draws_across_the_whole_sorted_split_with_a_seed():
    from kerasft.data import load_wordnet, sample_records

    words = load_wordnet("train")
    sample = sample_records(words, 400, seed=0)
    assert len(sample) == 400 and len({r["prompt"] for r in sample}) == 400
    assert all(r in words for r in sample[:20])
    assert sample == sample_records(words, 400, seed=0)
    assert sample != sample_records(words, 400, seed=1)
    # Not the alphabetical head the main job used to take: spread over the split.
    positions = sorted(words.index(r) for r in sample[:50])
    assert positions[-1] > len(words) // 2 and positions[0] < len(words) // 2
    assert not {r["prompt"] for r in sample} <= {r["prompt"] for r in words[:400]}
    # A prefix of a sample is the same seed's smaller sample.
    assert sample_records(words, 50, seed=0) == sample[:50]
    assert sorted(map(str, sample_records(list(range(5)), None, seed=0))) == list("01234")
    assert len(sample_records(list(range(5)), 9, seed=0)) == 5


@pytest.mark.parametrize("bad", [-1, 2.5, True, "10"])
def test_sample_records_rejects_bad_counts(bad):
    from kerasft.data import sample_records

    with pytest.raises(ValueError, match=rf"num_records={bad!r}"):
        sample_records(list(range(5)), bad)
