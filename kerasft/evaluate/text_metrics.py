"""Text-overlap metrics for generated answers, equal to the standard tools.

Each function reproduces the implementation people cite, in plain Python (no
run-time dependency, the same number on every backend), and
`tests/evaluate/test_evaluate_standard_metrics.py` checks it against that
implementation on a fixed set of string pairs:

- `bleu`: sacreBLEU's `corpus_bleu` with its defaults (13a tokenizer, mixed
  case, `exp` smoothing, no effective order), on the [0, 1] scale.
- `rouge_n`, `rouge_l` (in `kerasft.evaluate.rouge`): the `rouge-score`
  package's `rougeN` / `rougeL` F-measure.
- `normalize_answer`, `exact_match`, `token_f1`: the official SQuAD v1.1
  evaluation script.

`describe_metrics` returns these settings as one line for a results table.
"""

import collections
import math
import re
import string
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# sacrebleu 2.x `tokenizers/tokenizer_re.py` (`TokenizerRegexp`), the regular
# expressions of mteval-v13a: split off punctuation and symbols, periods and
# commas unless between digits, and a dash after a digit.
_BLEU_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
_BLEU_SMOOTHING = ("exp", "none", "floor", "add-k")
_BLEU_SMOOTH_DEFAULTS = {"floor": 0.1, "add-k": 1}
# sacrebleu's `my_log(0)`: a zero precision counts as this log, so the score
# is exp(very negative) = 0.0.
_LOG_ZERO = -9999999999


def _text(value, name):
    """`value` as `str` (bytes are UTF-8 decoded, as keras-hub may return them)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be a string. Received: {name}={value!r} "
            f"of type {type(value).__name__}"
        )
    return value


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalisation.

    Lowercases, removes ASCII punctuation (`string.punctuation`), replaces the
    whole words "a", "an" and "the" by spaces, and collapses whitespace, in
    the order of the official SQuAD v1.1 `evaluate-v1.1.py`.

    Args:
        text: The text to normalise (`str`, or UTF-8 `bytes`).

    Returns:
        The normalised text.
    """
    text = _text(text, "text").lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 if the answers are equal after `normalize_answer`, else 0.0.

    As SQuAD v1.1's `exact_match_score`: two answers that both normalise to
    the empty string match.

    Args:
        pred: The generated answer.
        ref: The reference answer.

    Returns:
        1.0 or 0.0.
    """
    return float(normalize_answer(_text(pred, "pred")) == normalize_answer(_text(ref, "ref")))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD v1.1 token F1 between two answers.

    Both answers are normalised with `normalize_answer` and split on
    whitespace; precision and recall count the shared tokens with
    multiplicity. As in SQuAD v1.1's `f1_score`, no shared token gives 0.0,
    which includes a pair that is empty on either side or on both (SQuAD
    v2.0's script instead gives 1.0 when both are empty; `exact_match` is 1.0
    there in both versions).

    Args:
        pred: The generated answer.
        ref: The reference answer.

    Returns:
        F1 in [0, 1].
    """
    pred_tokens = normalize_answer(_text(pred, "pred")).split()
    ref_tokens = normalize_answer(_text(ref, "ref")).split()
    common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
    shared = sum(common.values())
    if shared == 0:
        return 0.0
    precision = shared / len(pred_tokens)
    recall = shared / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def bleu_tokenize(text: str) -> list[str]:
    """The tokens sacreBLEU's default `13a` tokenizer makes of `text`.

    As sacreBLEU's BLEU preprocessing: trailing whitespace stripped,
    `<skipped>` removed, `-\\n` joined, newlines turned into spaces, the HTML
    entities `&quot;`, `&amp;`, `&lt;` and `&gt;` unescaped, then the
    mteval-v13a rules: symbols and punctuation other than `'`, `-`, `.` and
    `,` become tokens of their own; `.` and `,` too unless between two
    digits; `-` after a digit too. Case is kept.

    Args:
        text: The text.

    Returns:
        The tokens.
    """
    line = _text(text, "text").rstrip()
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&")
        line = line.replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _BLEU_13A_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def bleu(
    preds: Sequence[str],
    refs: Sequence,
    max_order: int = 4,
    smoothing: str = "exp",
    *,
    smooth_value: float | None = None,
    effective_order: bool = False,
) -> float:
    """Corpus BLEU, equal to sacreBLEU's `corpus_bleu` / 100.

    Texts are tokenized with `bleu_tokenize` (sacreBLEU's default `13a`, case
    kept). For each order `n` the clipped n-gram matches (against the maximum
    count over a prediction's references) and the n-gram counts of the
    predictions are summed over the whole corpus, `p_n = matches_n /
    total_n`, and `BLEU = BP * exp(mean(log p_n))`. The brevity penalty is
    `BP = exp(1 - r / c)` when the total prediction length `c` is shorter than
    the total reference length `r` (each prediction's closest reference
    length, the shorter on ties), else 1; 0 when `c = 0`.

    As in sacreBLEU: no match of any order gives 0; the first order with no
    n-grams at all in the predictions (every prediction shorter than `n`
    tokens) ends the loop and the orders from there on count as precision 0,
    so BLEU is 0 (unless `effective_order`, which averages over the orders
    before it). Smoothing, for the orders with n-grams but no match:

    - `"exp"` (default; sacreBLEU's default and NIST mteval-v13a, method 3 of
      Chen & Cherry, 2014): the k-th such order gets `p_n = 1 / (2^k *
      total_n)`.
    - `"floor"`: `p_n = smooth_value / total_n` (default 0.1).
    - `"add-k"`: `smooth_value` (default 1) is added to the matches and the
      totals of every order above 1.
    - `"none"`: `p_n = 0`, so BLEU is 0.

    Args:
        preds: The generated texts.
        refs: One reference per prediction: a string, or a list of strings
            when there are several references (the lists may differ in
            length).
        max_order: Largest n-gram order.
        smoothing: `"exp"`, `"floor"`, `"add-k"` or `"none"`, see above.
        smooth_value: The value for `"floor"` and `"add-k"`; None uses
            sacreBLEU's default.
        effective_order: Average only over the orders up to the last one
            with n-grams (sacreBLEU's `effective_order`, meant for
            sentence-level BLEU).

    Returns:
        BLEU in [0, 1] (sacreBLEU reports 100 times this).

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
    if smooth_value is None:
        smooth_value = _BLEU_SMOOTH_DEFAULTS.get(smoothing)
    matches = [0] * max_order
    totals = [0] * max_order
    pred_length = 0
    ref_length = 0
    for index, (pred, pred_refs) in enumerate(zip(preds, refs)):
        pred_refs = [pred_refs] if isinstance(pred_refs, (str, bytes)) else list(pred_refs)
        if not pred_refs:
            raise ValueError(
                f"Every prediction needs at least one reference. Received: refs[{index}]=[]"
            )
        pred_tokens = bleu_tokenize(pred)
        refs_tokens = [bleu_tokenize(ref) for ref in pred_refs]
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

    # From here on, sacrebleu's `BLEU.compute_bleu` step by step.
    if pred_length < ref_length:
        brevity = math.exp(1 - ref_length / pred_length) if pred_length > 0 else 0.0
    else:
        brevity = 1.0
    if not any(matches):
        return 0.0
    precisions = [0.0] * max_order
    zero_matches_seen = 0
    used_orders = max_order
    for n in range(1, max_order + 1):
        if smoothing == "add-k" and n > 1:
            matches[n - 1] += smooth_value
            totals[n - 1] += smooth_value
        if totals[n - 1] == 0:
            break
        if effective_order:
            used_orders = n
        if matches[n - 1] == 0:
            if smoothing == "exp":
                zero_matches_seen += 1
                precisions[n - 1] = 1.0 / (2**zero_matches_seen * totals[n - 1])
            elif smoothing == "floor":
                precisions[n - 1] = smooth_value / totals[n - 1]
        else:
            precisions[n - 1] = matches[n - 1] / totals[n - 1]
    log_sum = sum(math.log(p) if p > 0 else _LOG_ZERO for p in precisions[:used_orders])
    return brevity * math.exp(log_sum / used_orders)


def _ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def describe_metrics(*, use_stemmer: bool = False, smoothing: str = "exp") -> str:
    """Which implementation and settings the generation metrics use, in words.

    `kerasft.evaluate.generate_and_score` puts this under `"metrics"` in its
    result; a results table should print it beside the numbers.

    Args:
        use_stemmer: Whether ROUGE stemmed its tokens.
        smoothing: The BLEU smoothing.

    Returns:
        One line, e.g. "BLEU: sacreBLEU corpus BLEU (13a tokenizer, mixed
        case, exp smoothing, max order 4), 0-1 scale; ROUGE-1/2/L:
        rouge-score F-measure (rougeL, no stemming), mean over examples;
        exact match, token F1: SQuAD v1.1 script (normalised: lowercase, no
        punctuation, no a/an/the), mean over examples".
    """
    if smoothing not in _BLEU_SMOOTHING:
        raise ValueError(
            f"`smoothing` must be one of {_BLEU_SMOOTHING}. Received: smoothing={smoothing!r}"
        )
    stemming = "Porter stemming (NLTK)" if use_stemmer else "no stemming"
    return (
        f"BLEU: sacreBLEU corpus BLEU (13a tokenizer, mixed case, {smoothing} smoothing, "
        f"max order 4), 0-1 scale; ROUGE-1/2/L: rouge-score F-measure (rougeL, {stemming}), "
        "mean over examples; exact match, token F1: SQuAD v1.1 script (normalised: "
        "lowercase, no punctuation, no a/an/the), mean over examples"
    )
