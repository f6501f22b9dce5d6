import math

import keras
import pytest

from kerasft.evaluate import bleu, exact_match, normalize_answer, token_f1


def test_normalize_answer_follows_squad():
    # lower -> "the  cat's hat!" ; drop punctuation -> "the  cats hat" ;
    # drop articles -> "  cats hat" ; collapse spaces -> "cats hat".
    assert normalize_answer("The  Cat's hat!") == "cats hat"
    # "an" and "a" are articles only as whole words ("banana" keeps its "a"s).
    assert normalize_answer("An apple, a banana") == "apple banana"


def test_exact_match_after_normalisation():
    # "The Cat!" -> "cat" == "cat".
    assert exact_match("The Cat!", "cat") == 1.0
    # "dog" != "cat".
    assert exact_match("a dog", "the cat") == 0.0
    # Both normalise to "" (only an article and punctuation).
    assert exact_match("The.", "") == 1.0


def test_token_f1_hand_computed():
    # pred -> [cat, sat, on, mat] (4), ref -> [cat, sat, on, red, mat] (5);
    # shared 4: P = 4/4, R = 4/5, F1 = 2 * 1 * 0.8 / 1.8 = 8/9.
    assert token_f1("the cat sat on the mat", "a cat sat on a red mat") == pytest.approx(8 / 9, rel=1e-12)
    # Shared tokens count with multiplicity: pred {cat: 2, dog: 1} (3),
    # ref {cat: 1, dog: 2, bird: 1} (4); shared = min(2,1) + min(1,2) = 2:
    # P = 2/3, R = 1/2, F1 = (2/3) / (7/6) = 4/7.
    assert token_f1("cat cat dog", "cat dog dog bird") == pytest.approx(4 / 7, rel=1e-12)
    # No shared token.
    assert token_f1("red", "blue") == 0.0
    # SQuAD v1.1 (the official script): no shared token -> 0, also when
    # both are empty (SQuAD 2.0's script would give 1.0 there; this
    # assertion was `== 1.0` under that convention); one empty -> 0 ("the"
    # normalises to "").
    assert token_f1("", "") == 0.0
    assert token_f1("the", "cat") == 0.0


def test_bleu_single_sentence_with_and_without_smoothing():
    # pred "the cat sat on the mat", ref "the cat is on the mat":
    # 1-grams 5/6 (the x2, cat, on, mat), 2-grams 3/5 (the cat, on the,
    # the mat), 3-grams 1/4 (on the mat), 4-grams 0/3; c = r = 6 so BP = 1.
    pred, ref = ["the cat sat on the mat"], ["the cat is on the mat"]
    assert bleu(pred, ref, smoothing="none") == 0.0
    # "exp": the first order with no match gets 1 / (2 * 3) = 1/6;
    # BLEU = (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** (1/4) = 0.37992.
    assert bleu(pred, ref) == pytest.approx((1 / 48) ** 0.25, rel=1e-12)
    assert bleu(pred, ref) == pytest.approx(0.379918, abs=1e-6)


def test_bleu_pools_counts_over_the_corpus_with_brevity_penalty():
    # Example 1: "a b c d e" vs itself: 5/5, 4/4, 3/3, 2/2, length 5 vs 5.
    # Example 2: "a b c d" vs "a b c x y z": 3/4, 2/3 (a b, b c), 1/2 (a b c),
    # 0/1, length 4 vs 6. Pooled: 8/9, 6/7, 4/5, 2/3; c = 9, r = 11,
    # BP = exp(1 - 11/9) = exp(-2/9).
    preds = ["a b c d e", "a b c d"]
    refs = ["a b c d e", "a b c x y z"]
    expected = math.exp(-2 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert bleu(preds, refs) == pytest.approx(expected, rel=1e-12)
    assert bleu(preds, refs) == pytest.approx(0.639315, abs=1e-6)
    # No zero counts, so smoothing changes nothing.
    assert bleu(preds, refs, smoothing="none") == pytest.approx(expected, rel=1e-12)


def test_bleu_matches_keras_hub_bleu_without_smoothing():
    keras_hub = pytest.importorskip("keras_hub")
    preds = ["a b c d e", "a b c d", "the quick brown fox jumps"]
    refs = ["a b c d e", "a b c x y z", "the quick red fox jumps high"]
    metric = keras_hub.metrics.Bleu(max_order=4, smooth=False)
    metric.update_state([[r] for r in refs], preds)
    expected = float(keras.ops.convert_to_numpy(metric.result()))
    assert bleu(preds, refs, smoothing="none") == pytest.approx(expected, rel=1e-5)


def test_bleu_multiple_references_clip_to_max_and_pick_closest_length():
    # refs of lengths 3 and 5 are equally close to c = 4: the shorter (3) is
    # used, so c > r and BP = 1. Every n-gram of "a b c d" is in the second
    # reference, so all precisions are 1 and BLEU = 1 (with r = 5 it would be
    # exp(1 - 5/4) = 0.7788).
    assert bleu(["a b c d"], [["a b c", "a b c d e"]]) == pytest.approx(1.0)


def test_bleu_prediction_shorter_than_max_order():
    # "a b" has no 3-grams: that order has no counts, BLEU is 0 (sacrebleu).
    assert bleu(["a b"], ["a b"]) == 0.0
    assert bleu(["a b"], ["a b"], max_order=2) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(preds=["a"], refs=["a", "b"]), r"len\(preds\)=1, len\(refs\)=2"),
        (dict(preds="a", refs=["a"]), "preds='a'"),
        (dict(preds=["a"], refs=["a"], max_order=0), "max_order=0"),
        (dict(preds=["a"], refs=["a"], smoothing="add1"), "smoothing='add1'"),
        (dict(preds=["a"], refs=[[]]), r"refs\[0\]=\[\]"),
    ],
)
def test_bleu_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bleu(**kwargs)


def test_metrics_take_bytes_and_reject_other_types():
    # keras-hub may hand back UTF-8 bytes; they score as the decoded text.
    assert exact_match(b"The Caf\xc3\xa9!", "caf\u00e9") == 1.0
    assert token_f1(b"cat sat", "cat") == pytest.approx(2 / 3, rel=1e-12)
    with pytest.raises(TypeError, match="pred=None of type NoneType"):
        exact_match(None, "cat")
    with pytest.raises(TypeError, match="text=3"):
        normalize_answer(3)


def test_bleu_tokenize_is_13a_hand_checked():
    from kerasft.evaluate import bleu_tokenize

    # Punctuation splits off; "." and "," stay inside numbers; "'" and "-"
    # stay inside words; a dash after a digit splits; case is kept.
    assert bleu_tokenize("It's 3.14, e-mail (1999-2000).") == [
        "It's", "3.14", ",", "e-mail", "(", "1999", "-", "2000", ")", ".",
    ]
    assert bleu_tokenize("a &amp; b\nc") == ["a", "&", "b", "c"]
