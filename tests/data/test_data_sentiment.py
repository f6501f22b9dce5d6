from collections import Counter

import pytest

from kerasft.data import TWEETS_SENTIMENT_CLASS_NAMES, load_tweets_sentiment


def test_splits_sizes_labels_and_stratification():
    splits = {name: load_tweets_sentiment(name) for name in ("train", "validation", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 3000, "validation": 500, "test": 1000}
    assert TWEETS_SENTIMENT_CLASS_NAMES == ("negative", "neutral", "positive")
    counts = {k: Counter(r["label"] for r in v) for k, v in splits.items()}
    assert counts["train"] == {0: 1529, 1: 1089, 2: 382}
    assert counts["validation"] == {0: 255, 1: 181, 2: 64}
    assert counts["test"] == {0: 510, 1: 363, 2: 127}
    for records in splits.values():
        for record in records:
            assert set(record) == {"text", "label"}
            assert isinstance(record["text"], str) and record["text"].strip() == record["text"] != ""


def test_no_text_in_two_splits_or_twice():
    texts = [r["text"].lower() for name in ("train", "validation", "test") for r in load_tweets_sentiment(name)]
    assert len(texts) == len(set(texts))


def test_known_record():
    train = load_tweets_sentiment("train")
    assert {"text": "I hate you @iTunesMusic @apple", "label": 0} in train
    assert {"text": "I love my #iphone6 @apple #MobilePhone http://t.co/5AJVSQXGDn http://t.co/kLwBBWIp0o", "label": 2} in train


def test_unknown_split_names_the_value():
    with pytest.raises(ValueError, match="split='dev'"):
        load_tweets_sentiment("dev")


def test_text_classification_arrays(tokenizer):
    from kerasft.data import text_classification_arrays

    records = [{"text": "A cat is a small animal.", "label": 2}, {"text": "", "label": 0}]
    x, y = text_classification_arrays(records, tokenizer, sequence_length=5)
    pieces = tokenizer(["A cat is a small animal."])
    first = [tokenizer.start_token_id] + [int(i) for i in list(pieces[0])][:4]
    assert x["token_ids"].dtype == "int32" and x["padding_mask"].dtype == bool
    assert x["token_ids"][0].tolist() == first
    assert x["padding_mask"].tolist() == [[True] * 5, [True, False, False, False, False]]
    assert x["token_ids"][1].tolist() == [tokenizer.start_token_id, 0, 0, 0, 0]
    assert y.tolist() == [2, 0]
    with pytest.raises(ValueError, match="sequence_length=1"):
        text_classification_arrays(records, tokenizer, sequence_length=1)
