import pytest

from kerasft.evaluate import rouge_l, rouge_n


def test_rouge_l_hand_computed():
    # pred "the cat sat on the mat", ref "the cat is on the mat" (6 tokens
    # each); LCS = "the cat on the mat" = 5: P = R = 5/6, F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6, rel=1e-12)
    # pred [a, b, c, d], ref [b, d, e]; LCS = "b d" = 2: P = 1/2, R = 2/3,
    # F1 = 2 * (1/2) * (2/3) / (1/2 + 2/3) = (2/3) / (7/6) = 4/7.
    assert rouge_l("A B C D", "b d e") == pytest.approx(4 / 7, rel=1e-12)
    # beta = 2: F = 5 P R / (R + 4 P) = 5 * (1/2) * (2/3) / (2/3 + 2) = 5/8.
    assert rouge_l("A B C D", "b d e", beta=2.0) == pytest.approx(5 / 8, rel=1e-12)
    # Case and punctuation are ignored; empty texts score 0.
    assert rouge_l("Hello, world!", "hello world") == 1.0
    assert rouge_l("", "hello") == 0.0
    with pytest.raises(ValueError, match="beta=0"):
        rouge_l("a", "a", beta=0)


def test_rouge_n_hand_computed():
    # pred [the, cat, sat, on, the, mat], ref [the, cat, is, on, the, mat]:
    # unigrams shared 5 (the x2, cat, on, mat) of 6 and 6 -> F = 5/6;
    # bigrams shared 3 (the cat, on the, the mat) of 5 and 5 -> F = 3/5.
    assert rouge_n("the cat sat on the mat", "the cat is on the mat", 1) == pytest.approx(5 / 6, rel=1e-12)
    assert rouge_n("the cat sat on the mat", "the cat is on the mat", 2) == pytest.approx(3 / 5, rel=1e-12)
    # Only ASCII letters and digits make tokens (as rouge-score): "café" is
    # "caf"; stemming: "running" -> "run".
    assert rouge_n("café", "caf", 1) == 1.0
    assert rouge_n("running", "run", 1) == 0.0
    assert rouge_n("running", "run", 1, use_stemmer=True) == 1.0
    with pytest.raises(ValueError, match="n=0"):
        rouge_n("a", "a", 0)
