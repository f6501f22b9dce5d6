"""Text-overlap metrics for generated answers, in plain Python.

`keras_hub.metrics` has `Bleu` and `RougeL`, but `Bleu` runs TensorFlow string
ops inside a Keras metric (so every call goes through TensorFlow whatever the
backend) and has no NIST/sacrebleu smoothing, and `RougeL` needs the extra
`rouge-score` package. These functions are a few lines each, give the same
number on every backend, and are checked against hand-computed values (and
against `keras_hub.metrics.Bleu`) in the tests.
"""

import collections
import math
import re
import string
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_BLEU_TOKEN = re.compile(r"\w+|[^\w\s]")
_ROUGE_TOKEN = re.compile(r"[^\W_]+")
_BLEU_SMOOTHING = ("none", "exp")


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation.

    Lowercases, removes ASCII punctuation, removes the articles "a", "an" and
    "the", and collapses whitespace (the order of the official SQuAD script).

    Args:
        text: The text to normalise.

    Returns:
        The normalised text.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 if the answers are equal after `normalize_answer`, else 0.0.

    Args:
        pred: The generated answer.
        ref: The reference answer.

    Returns:
        1.0 or 0.0.
    """
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token F1 between two answers.

    Both answers are normalised with `normalize_answer` and split on
    whitespace; precision and recall count the shared tokens with
    multiplicity. If either answer is empty after normalisation, the score is
    1.0 when both are empty and 0.0 otherwise (as in SQuAD 2.0).

    Args:
        pred: The generated answer.
        ref: The reference answer.

    Returns:
        F1 in [0, 1].
    """
    pred_tokens = normalize_answer(pred).split()
    ref_tokens = normalize_answer(ref).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
    shared = sum(common.values())
    if shared == 0:
        return 0.0
    precision = shared / len(pred_tokens)
    recall = shared / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def rouge_l(pred: str, ref: str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure from the longest common subsequence of tokens.

    Tokens are the lowercased runs of letters and digits (as the
    `rouge-score` package does, without stemming). With `lcs` the length of
    the longest common subsequence, `P = lcs / len(pred)`,
    `R = lcs / len(ref)` and `F = (1 + beta^2) P R / (R + beta^2 P)`.
    An empty prediction or reference scores 0.0.

    Args:
        pred: The generated text.
        ref: The reference text.
        beta: Weight of recall relative to precision; 1.0 gives the harmonic
            mean.

    Returns:
        F in [0, 1].
    """
    if not beta > 0:
        raise ValueError(f"`beta` must be positive. Received: beta={beta!r}")
    pred_tokens = _ROUGE_TOKEN.findall(pred.lower())
    ref_tokens = _ROUGE_TOKEN.findall(ref.lower())
    if not pred_tokens or not ref_tokens:
        return 0.0
    lcs = _lcs_length(pred_tokens, ref_tokens)
    if lcs == 0:
        return 0.0
    precision = lcs / len(pred_tokens)
    recall = lcs / len(ref_tokens)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def _lcs_length(a, b):
    """Length of the longest common subsequence, in O(len(a) * len(b))."""
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b):
            if token_a == token_b:
                current.append(previous[j] + 1)
            else:
                current.append(max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def bleu(
    preds: Sequence[str],
    refs: Sequence,
    max_order: int = 4,
    smoothing: str = "exp",
) -> float:
    """Corpus BLEU (Papineni et al., 2002) with brevity penalty.

    Texts are split into word runs and single punctuation marks
    (`\\w+|[^\\w\\s]`), case kept. For each order `n` the clipped n-gram
    matches and the n-gram counts of the predictions are summed over the whole
    corpus (not averaged per sentence), `p_n = matches_n / total_n`, and
    `BLEU = BP * exp(mean(log p_n))`. The brevity penalty is
    `BP = exp(1 - r / c)` when the total prediction length `c` is shorter than
    the total reference length `r` (each prediction's closest reference
    length, the shorter on ties), else 1.

    Smoothing, for orders with no match at all:

    - `"exp"` (default; NIST mteval-v13a and sacrebleu's default, method 3 of
      Chen & Cherry, 2014): the k-th order with zero matches gets
      `p_n = 1 / (2^k * total_n)`, so one missing 4-gram match does not zero
      the score of a short-answer corpus.
    - `"none"`: `p_n = 0` and the score is 0.

    An order with no n-grams at all in the predictions (every prediction
    shorter than `n` tokens) gives 0 either way, as in sacrebleu.

    Args:
        preds: The generated texts.
        refs: One reference per prediction: a string, or a list of strings
            when there are several references.
        max_order: Largest n-gram order.
        smoothing: `"exp"` or `"none"`, see above.

    Returns:
        BLEU in [0, 1] (sacrebleu reports 100 times this).

    Raises:
        ValueError: If the lengths differ, `max_order` is not a positive
            integer, `smoothing` is unknown, or a prediction has no reference.
    """
    if isinstance(preds, str) or isinstance(refs, str):
        raise ValueError(
            "`preds` and `refs` must be sequences of texts, not one string. "
            f"Received: preds={preds!r}, refs={refs!r}"
        )
    if len(preds) != len(refs):
        raise ValueError(
            "`preds` and `refs` must have the same length. Received: "
            f"len(preds)={len(preds)}, len(refs)={len(refs)}"
        )
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(
            f"`max_order` must be a positive integer. Received: max_order={max_order!r}"
        )
    if smoothing not in _BLEU_SMOOTHING:
        raise ValueError(
            f"`smoothing` must be one of {_BLEU_SMOOTHING}. Received: smoothing={smoothing!r}"
        )
    matches = [0] * max_order
    totals = [0] * max_order
    pred_length = 0
    ref_length = 0
    for index, (pred, pred_refs) in enumerate(zip(preds, refs)):
        pred_refs = [pred_refs] if isinstance(pred_refs, str) else list(pred_refs)
        if not pred_refs:
            raise ValueError(
                f"Every prediction needs at least one reference. Received: refs[{index}]=[]"
            )
        pred_tokens = _BLEU_TOKEN.findall(pred)
        refs_tokens = [_BLEU_TOKEN.findall(ref) for ref in pred_refs]
        pred_length += len(pred_tokens)
        ref_length += min(
            (len(tokens) for tokens in refs_tokens),
            key=lambda length: (abs(length - len(pred_tokens)), length),
        )
        for n in range(1, max_order + 1):
            pred_ngrams = _ngrams(pred_tokens, n)
            max_ref_counts = collections.Counter()
            for tokens in refs_tokens:
                max_ref_counts |= _ngrams(tokens, n)
            matches[n - 1] += sum((pred_ngrams & max_ref_counts).values())
            totals[n - 1] += sum(pred_ngrams.values())

    if pred_length == 0:
        return 0.0
    log_precisions = []
    zero_matches_seen = 0
    for n_matches, n_total in zip(matches, totals):
        if n_total == 0:
            return 0.0
        if n_matches == 0:
            if smoothing == "none":
                return 0.0
            zero_matches_seen += 1
            log_precisions.append(-math.log(2**zero_matches_seen * n_total))
        else:
            log_precisions.append(math.log(n_matches / n_total))
    brevity = 1.0 if pred_length > ref_length else math.exp(1 - ref_length / pred_length)
    return brevity * math.exp(sum(log_precisions) / max_order)


def _ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
