"""Evaluation of fine-tuned causal LMs.

- `perplexity`: token-weighted NLL over `(x, y, sample_weight)` batches,
  without materialising full-vocabulary logits.
- `generate_and_score`: batched greedy generation on held-out prompts, scored
  with `exact_match`, `token_f1`, `bleu` and `rouge_l`.
- `generate_token_ids`: token ids in and out, with or without a preprocessor
  (keras-hub's Gemma 3 `generate` needs one).
- `accuracy`, `macro_f1`: classification metrics in numpy.
"""

from kerasft.evaluate.classification import accuracy, macro_f1
from kerasft.evaluate.generation import generate_and_score, generate_token_ids, greedy_generate
from kerasft.evaluate.perplexity import perplexity
from kerasft.evaluate.text_metrics import (
    bleu,
    exact_match,
    normalize_answer,
    rouge_l,
    token_f1,
)

__all__ = [
    "accuracy",
    "bleu",
    "exact_match",
    "generate_and_score",
    "generate_token_ids",
    "greedy_generate",
    "macro_f1",
    "normalize_answer",
    "perplexity",
    "rouge_l",
    "token_f1",
]
