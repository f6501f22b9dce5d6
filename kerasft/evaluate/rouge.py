"""ROUGE-N and ROUGE-L, equal to the `rouge-score` package.

`rouge_n`, `rouge_l`: `rouge_score.rouge_scorer.RougeScorer`'s `rougeN` /
`rougeL` F-measure (lowercase, ASCII letters and digits only, optional Porter
stemming of tokens longer than 3 characters), in plain Python;
`tests/evaluate/test_evaluate_standard_metrics.py` checks them against the
package.
"""

import functools
import re

from kerasft.evaluate.text_metrics import _ngrams, _text

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """The tokens `rouge-score`'s default tokenizer makes of `text`.

    Lowercases, keeps the runs of ASCII letters and digits (`[a-z0-9]+`;
    everything else, accented letters included, separates tokens) and, with
    `use_stemmer`, stems the tokens longer than 3 characters with NLTK's
    `PorterStemmer()`, the stemmer `rouge-score` itself uses.

    Args:
        text: The text.
        use_stemmer: Whether to apply the Porter stemmer.

    Returns:
        The tokens.
    """
    tokens = _ROUGE_TOKEN.findall(_text(text, "text").lower())
    if use_stemmer:
        tokens = [_porter_stem(token) if len(token) > 3 else token for token in tokens]
        tokens = [token for token in tokens if _ROUGE_TOKEN.fullmatch(token)]
    return tokens


@functools.lru_cache(maxsize=65536)
def _porter_stem(token):
    return _porter_stemmer().stem(token)


@functools.lru_cache(maxsize=None)
def _porter_stemmer():
    # Stemming is the one part not reimplemented: NLTK's Porter stemmer (its
    # default NLTK_EXTENSIONS mode, as `rouge-score` uses it) has many special
    # cases, and reproducing it would be a second copy to keep in step.
    try:
        from nltk.stem import porter
    except ImportError as error:
        raise ImportError(
            "`use_stemmer=True` needs NLTK's Porter stemmer (the one `rouge-score` "
            "uses). Install it with `pip install kerasft[eval]` or `pip install nltk`. "
            "Received: use_stemmer=True"
        ) from error
    return porter.PorterStemmer()


def _f_measure(precision, recall, beta=1.0):
    if precision + recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def rouge_n(pred: str, ref: str, n: int = 1, *, use_stemmer: bool = False) -> float:
    """ROUGE-N F-measure, as `rouge_score.rouge_scorer.RougeScorer(["rougeN"])`.

    Tokens as in `rouge_tokenize`. With `overlap` the clipped count of shared
    n-grams, `P = overlap / max(pred n-grams, 1)`,
    `R = overlap / max(ref n-grams, 1)` and `F = 2 P R / (P + R)` (0.0 when
    `P + R = 0`).

    Args:
        pred: The generated text.
        ref: The reference text.
        n: The n-gram order (1 for ROUGE-1, 2 for ROUGE-2).
        use_stemmer: Whether to Porter-stem tokens (see `rouge_tokenize`).

    Returns:
        F in [0, 1].
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer. Received: n={n!r}")
    pred_ngrams = _ngrams(rouge_tokenize(pred, use_stemmer), n)
    ref_ngrams = _ngrams(rouge_tokenize(ref, use_stemmer), n)
    overlap = sum((pred_ngrams & ref_ngrams).values())
    precision = overlap / max(sum(pred_ngrams.values()), 1)
    recall = overlap / max(sum(ref_ngrams.values()), 1)
    return _f_measure(precision, recall)


def rouge_l(pred: str, ref: str, beta: float = 1.0, *, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure, as `rouge_score.rouge_scorer.RougeScorer(["rougeL"])`.

    Sentence-level: the longest common subsequence of the whole token lists
    (tokens as in `rouge_tokenize`), not the summary-level `rougeLsum`. With
    `lcs` its length, `P = lcs / len(pred)`, `R = lcs / len(ref)` and
    `F = (1 + beta^2) P R / (R + beta^2 P)`. An empty prediction or
    reference scores 0.0. `rouge-score` has no `beta`; with the default 1.0
    this is its number.

    Args:
        pred: The generated text.
        ref: The reference text.
        beta: Weight of recall relative to precision; 1.0 gives the harmonic
            mean.
        use_stemmer: Whether to Porter-stem tokens (see `rouge_tokenize`).

    Returns:
        F in [0, 1].
    """
    if not beta > 0:
        raise ValueError(f"`beta` must be positive. Received: beta={beta!r}")
    pred_tokens = rouge_tokenize(pred, use_stemmer)
    ref_tokens = rouge_tokenize(ref, use_stemmer)
    if not pred_tokens or not ref_tokens:
        return 0.0
    lcs = _lcs_length(pred_tokens, ref_tokens)
    return _f_measure(lcs / len(pred_tokens), lcs / len(ref_tokens), beta)


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
