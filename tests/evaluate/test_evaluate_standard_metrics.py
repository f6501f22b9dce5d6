"""kerasft's text metrics against the implementations people cite.

sacreBLEU and rouge-score are imported directly (not skipped): the `eval`
extra that `scripts/setup_env.sh` installs brings them, so CI compares with
the real packages. The SQuAD v1.1 reference is the official script's code,
copied below.
"""

import collections
import json
import pathlib
import re
import string

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from kerasft.evaluate import (
    bleu,
    bleu_tokenize,
    describe_metrics,
    exact_match,
    normalize_answer,
    rouge_l,
    rouge_n,
    rouge_tokenize,
    token_f1,
)

PAIRS = [tuple(pair) for pair in json.loads(
    (pathlib.Path(__file__).parent / "data" / "metric_pairs.json").read_text("utf-8")
)]
PREDS = [pred for pred, _ in PAIRS]
REFS = [ref for _, ref in PAIRS]


# --- The official SQuAD v1.1 evaluation script (evaluate-v1.1.py), verbatim
# but for names and Python 3 syntax. ---
def squad_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def squad_f1_score(prediction, ground_truth):
    prediction_tokens = squad_normalize_answer(prediction).split()
    ground_truth_tokens = squad_normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def squad_exact_match_score(prediction, ground_truth):
    return squad_normalize_answer(prediction) == squad_normalize_answer(ground_truth)


def test_the_fixed_set_is_varied():
    assert len(PAIRS) >= 50
    assert ("", "") in PAIRS and any(p == "" for p in PREDS) and any(r == "" for r in REFS)
    # Some predictions shorter than BLEU's 4-gram order, some with articles,
    # punctuation, upper case, digits.
    assert sum(len(bleu_tokenize(p)) < 4 for p in PREDS) >= 10
    assert any(re.search(r"\b(a|an|the)\b", p, re.I) for p in PREDS)
    assert any(re.search(r"[0-9]", p) for p in PREDS)
    assert any(p != p.lower() for p in PREDS)


@pytest.mark.parametrize("pred, ref", PAIRS)
def test_squad_exact_match_and_f1_equal_the_official_script(pred, ref):
    assert normalize_answer(pred) == squad_normalize_answer(pred)
    assert exact_match(pred, ref) == float(squad_exact_match_score(pred, ref))
    assert token_f1(pred, ref) == pytest.approx(squad_f1_score(pred, ref), abs=1e-12)


def test_squad_empty_answers_follow_v1_1():
    # v1.1: both empty -> EM 1 (equal strings) but F1 0 (no shared token).
    assert (exact_match("", ""), token_f1("", "")) == (1.0, 0.0)
    assert (squad_exact_match_score("", ""), squad_f1_score("", "")) == (True, 0)
    # The marker glued to the answer no longer hides it once decoding drops
    # it; the text itself is scored as text.
    assert normalize_answer("A platypus<end_of_turn>") == "platypusendofturn"


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_equals_rouge_score_per_pair_and_as_a_mean(use_stemmer):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    tokenizer = scorer._tokenizer
    ours = {"rouge1": [], "rouge2": [], "rougeL": []}
    theirs = {"rouge1": [], "rouge2": [], "rougeL": []}
    for pred, ref in PAIRS:
        assert rouge_tokenize(pred, use_stemmer) == tokenizer.tokenize(pred), pred
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        ours["rouge1"].append(rouge_n(pred, ref, 1, use_stemmer=use_stemmer))
        ours["rouge2"].append(rouge_n(pred, ref, 2, use_stemmer=use_stemmer))
        ours["rougeL"].append(rouge_l(pred, ref, use_stemmer=use_stemmer))
        for key in theirs:
            theirs[key].append(scores[key].fmeasure)
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
        # kerasft's aggregation: the mean over examples of the per-pair F1.
        mean = sum(theirs[key]) / len(theirs[key])
        assert sum(ours[key]) / len(ours[key]) == pytest.approx(mean, abs=1e-6)
    # Stemming changes some scores on this set (so both settings are tested).
    assert any(a != b for a, b in zip(ours["rougeL"], [
        rouge_l(p, r, use_stemmer=not use_stemmer) for p, r in PAIRS
    ]))


@pytest.mark.parametrize("text", PREDS + REFS)
def test_bleu_tokenizer_equals_sacrebleu_13a(text):
    tokenizer = sacrebleu.BLEU()  # the defaults: 13a, mixed case
    assert bleu_tokenize(text) == tokenizer._preprocess_segment(text).split()


def _sacrebleu(preds, refs, **kwargs):
    return sacrebleu.metrics.BLEU(**kwargs).corpus_score(preds, [refs]).score / 100


def test_corpus_bleu_equals_sacrebleu_defaults():
    expected = sacrebleu.corpus_bleu(PREDS, [REFS]).score / 100
    assert 0 < expected < 1
    assert bleu(PREDS, REFS) == pytest.approx(expected, abs=1e-6)
    # Sub-corpora of 5 (some all-short, some with brevity penalty), and each
    # pair alone (mostly 0 or smoothed).
    for start in range(0, len(PAIRS), 5):
        preds, refs = PREDS[start : start + 5], REFS[start : start + 5]
        assert bleu(preds, refs) == pytest.approx(_sacrebleu(preds, refs), abs=1e-6), start
    for pred, ref in PAIRS:
        assert bleu([pred], [ref]) == pytest.approx(_sacrebleu([pred], [ref]), abs=1e-6), pred


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(smoothing="none"),
        dict(smoothing="floor"),
        dict(smoothing="floor", smooth_value=0.3),
        dict(smoothing="add-k"),
        dict(smoothing="add-k", smooth_value=2),
        dict(smoothing="exp", effective_order=True),
        dict(smoothing="exp", max_order=2),
    ],
)
def test_bleu_options_equal_sacrebleu(kwargs):
    theirs = dict(
        smooth_method=kwargs.get("smoothing"),
        smooth_value=kwargs.get("smooth_value"),
        effective_order=kwargs.get("effective_order", False),
        max_ngram_order=kwargs.get("max_order", 4),
    )
    assert bleu(PREDS, REFS, **kwargs) == pytest.approx(_sacrebleu(PREDS, REFS, **theirs), abs=1e-6)
    for start in range(0, len(PAIRS), 3):
        preds, refs = PREDS[start : start + 3], REFS[start : start + 3]
        assert bleu(preds, refs, **kwargs) == pytest.approx(
            _sacrebleu(preds, refs, **theirs), abs=1e-6
        ), (start, kwargs)


def test_bleu_with_several_references_equals_sacrebleu():
    # sacreBLEU takes one stream per reference; a missing one is None.
    second = [ref.upper() if i % 3 else None for i, ref in enumerate(REFS)]
    ours = [[ref] if other is None else [ref, other] for ref, other in zip(REFS, second)]
    expected = sacrebleu.corpus_bleu(PREDS, [REFS, second]).score / 100
    assert bleu(PREDS, ours) == pytest.approx(expected, abs=1e-6)


def test_describe_metrics_names_the_settings():
    line = describe_metrics()
    assert "sacreBLEU" in line and "13a" in line and "exp smoothing" in line
    assert "rouge-score" in line and "no stemming" in line and "mean over examples" in line
    assert "SQuAD v1.1" in line
    assert "Porter stemming" in describe_metrics(use_stemmer=True)
    with pytest.raises(ValueError, match="smoothing='add1'"):
        describe_metrics(smoothing="add1")
