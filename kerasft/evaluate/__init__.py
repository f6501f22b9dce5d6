"""Evaluation of fine-tuned causal LMs.

- `perplexity`: token-weighted NLL over `(x, y, sample_weight)` batches,
  without materialising full-vocabulary logits.
- `generate_and_score`: batched greedy generation on held-out prompts, decoded
  without stop and special tokens (`decode_generated`), scored with
  `exact_match`, `token_f1` (SQuAD v1.1), `rouge_n`, `rouge_l`
  (`rouge-score`) and `bleu` (sacreBLEU); `describe_metrics` says so in one
  line for a results table.
- `generate_token_ids`: token ids in and out, with or without a preprocessor
  (keras-hub's Gemma 3 `generate` needs one).
- `accuracy`, `macro_f1`: classification metrics in numpy.
- `model_logits`: float32 numpy logits of a model on one batch.
- `preference_accuracy`, `preference_margins`: how often a DPO / SimPO
  policy, a reward model or a plain LM prefers the chosen response.
- `forgetting`, `ForgettingMonitor`: perplexity and factual probes on general
  text, tuned against the base (adapters off).
- `multiple_choice`, `continuation_scores`: lm-eval style log-likelihood
  scoring of options.
"""

from kerasft.evaluate.classification import accuracy, macro_f1
from kerasft.evaluate.forgetting import ForgettingMonitor, forgetting
from kerasft.evaluate.generation import (
    decode_generated,
    generate_and_score,
    generate_token_ids,
    greedy_generate,
    resolve_stop_token_ids,
    special_token_ids,
)
from kerasft.evaluate.logits import model_logits
from kerasft.evaluate.multiple_choice import continuation_scores, multiple_choice
from kerasft.evaluate.perplexity import perplexity
from kerasft.evaluate.preference import preference_accuracy, preference_margins
from kerasft.evaluate.rouge import rouge_l, rouge_n, rouge_tokenize
from kerasft.evaluate.text_metrics import (
    bleu,
    bleu_tokenize,
    describe_metrics,
    exact_match,
    normalize_answer,
    token_f1,
)

__all__ = [
    "ForgettingMonitor",
    "accuracy",
    "bleu",
    "bleu_tokenize",
    "continuation_scores",
    "decode_generated",
    "describe_metrics",
    "exact_match",
    "forgetting",
    "generate_and_score",
    "generate_token_ids",
    "greedy_generate",
    "macro_f1",
    "model_logits",
    "multiple_choice",
    "normalize_answer",
    "perplexity",
    "preference_accuracy",
    "preference_margins",
    "resolve_stop_token_ids",
    "rouge_l",
    "rouge_n",
    "rouge_tokenize",
    "special_token_ids",
    "token_f1",
]

