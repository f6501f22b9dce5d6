"""Catastrophic forgetting: how much worse a tuned model is on general text than its base.

`forgetting(model)` scores the model and its base on the same held-out
general text (`kerasft.data.load_general_text("reference")`, which no task
and no replay trains on) and on short factual probes, and returns the
perplexity ratio `tuned / base`: 1.0 means nothing was lost, 1.2 means the
model is 20% more surprised by ordinary text than before tuning.

The base is the same model with its adapters switched off
(`kerasft.adapters_disabled`): no second copy of the weights. A fully
fine-tuned model has no adapters to switch off; give it the base's scores
measured before training (`base=` a previous result, as `ForgettingMonitor`
does) or a separate base model.
"""

import math
import warnings
from typing import Any

import keras

from kerasft.adapter_switch import adapters_disabled
from kerasft.data.batches import packed_text_batches
from kerasft.data.general_text import load_general_text, load_probes
from kerasft.evaluate.multiple_choice import continuation_scores
from kerasft.evaluate.perplexity import perplexity


def _tokenizer(model, tokenizer):
    tokenizer = tokenizer or getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "`tokenizer` is required when the model has no preprocessor. Received: "
            "tokenizer=None"
        )
    return tokenizer


def reference_batches(
    tokenizer,
    texts: list[str] | None = None,
    sequence_length: int = 128,
    batch_size: int = 8,
    max_characters: int | None = 20_000,
):
    """Packed, unshuffled rows of the reference text, every real token scored once.

    Every row starts with BOS (`packed_text_batches(bos_per_row=True)`): a
    row cut from the middle of a document without it is not how the model
    is used, and Gemma scores such rows far worse (on the 270M, perplexity
    244 without BOS), which made a model trained on such rows (replay) look
    as if it had forgotten less than nothing (ratio 0.10).

    Args:
        tokenizer: a keras-hub tokenizer.
        texts: documents (default: the shipped `load_general_text("reference")`).
        sequence_length: tokens per row.
        batch_size: rows per batch.
        max_characters: keep the first this many characters of the joined
            documents (None: all of them).
    """
    texts = load_general_text("reference") if texts is None else list(texts)
    if max_characters is not None:
        kept, left = [], max_characters
        for text in texts:
            if left <= 0:
                break
            kept.append(text[:left])
            left -= len(kept[-1])
        texts = kept
    return packed_text_batches(texts, tokenizer, sequence_length=sequence_length,
                               batch_size=batch_size, shuffle=False, bos_per_row=True)


def _scores(model, batches, probes, tokenizer):
    scores = perplexity(model, batches, progress=False)
    result = {"loss": scores["loss"], "perplexity": scores["perplexity"], "tokens": scores["tokens"]}
    if probes:
        probe_scores = continuation_scores(model, [(p["prompt"], p["answer"]) for p in probes],
                                           tokenizer)
        tokens = sum(s["tokens"] for s in probe_scores)
        result["probe_accuracy"] = sum(s["greedy"] for s in probe_scores) / len(probe_scores)
        result["probe_loss"] = -sum(s["logprob"] for s in probe_scores) / tokens
    return result


def forgetting(
    model: keras.Model,
    reference: Any = None,
    base: Any = None,
    *,
    tokenizer=None,
    probes: list[dict] | None | bool = True,
    sequence_length: int = 128,
    batch_size: int = 8,
    max_characters: int | None = 20_000,
) -> dict:
    """Perplexity on general reference text and factual probes, tuned vs base.

    Args:
        model: the tuned keras-hub causal LM.
        reference: the general text: None (the shipped reference set), a
            list of documents, or ready `(x, y, sample_weight)` batches.
        base: what to compare with: None (the same model with its adapters
            off), another model, or the `"base"` entry of a previous result
            (scores are then not measured again).
        tokenizer: a keras-hub tokenizer (default: the model's).
        probes: `{"prompt", "answer"}` facts; True for the shipped ones
            (`kerasft.data.load_probes`), None or False for none. A probe is
            right when greedy decoding from the prompt gives the answer's
            tokens (checked in one forward pass: every answer token is the
            argmax after the tokens before it).
        sequence_length, batch_size, max_characters: how documents are
            packed (`reference_batches`).

    Returns:
        `{"ratio": perplexity / base perplexity, "perplexity", "loss",
        "tokens", "probe_accuracy", "probe_loss", "probe_loss_ratio",
        "base": {the same scores of the base}}` (the probe entries only with
        probes; `probe_loss` is the mean NLL per answer token).

    Raises:
        ValueError: for a model with merged adapters and `base=None` (the
            base cannot be switched back on), or without a tokenizer.
    """
    if reference is None or (isinstance(reference, (list, tuple))
                             and all(isinstance(t, str) for t in reference)):
        batches = reference_batches(_tokenizer(model, tokenizer), reference, sequence_length,
                                    batch_size, max_characters)
    else:
        batches = reference
    probes = load_probes() if probes is True else (probes or [])
    if probes:
        tokenizer = _tokenizer(model, tokenizer)
    if isinstance(base, dict):
        base_scores = base
    elif isinstance(base, keras.Model):
        base_scores = _scores(base, batches, probes, tokenizer)
    elif base is None:
        # No Keras trace is used here (the scorers trace afresh), and inside `fit`
        # (ForgettingMonitor) the model's train function must survive the switch.
        with adapters_disabled(model, reset_compiled=False):
            base_scores = _scores(model, batches, probes, tokenizer)
    else:
        raise ValueError("`base` must be None, a keras.Model or a previous result's 'base'. "
                         f"Received: base of type {type(base).__name__}")
    scores = _scores(model, batches, probes, tokenizer)
    result = {"ratio": scores["perplexity"] / base_scores["perplexity"], **scores,
              "base": base_scores}
    if probes and "probe_loss" in base_scores:
        result["probe_loss_ratio"] = scores["probe_loss"] / base_scores["probe_loss"]
    return result


class ForgettingMonitor(keras.callbacks.Callback):
    """Measures `forgetting` after every epoch; warns or stops past a threshold.

    The base is scored once, when training begins (adapters off; for a full
    fine-tune, the model before its first step). Each epoch's ratio is added
    to the epoch logs as `forgetting_ratio` (and `forgetting_probe_accuracy`
    with probes), so `keras.callbacks.History` and `kerasft.TrainingHistory`
    record it.

    Args:
        threshold: the ratio above which to act (e.g. 1.1: 10% higher
            perplexity on general text than the base).
        action: `"warn"` (a `UserWarning`) or `"stop"` (ends training after
            the epoch, `model.stop_training = True`).
        tokenizer: the model's tokenizer. Needed when `fit` runs inside
            `kerasft.pretokenized`, which detaches the preprocessor.
        **kwargs: passed to `forgetting` (`reference`, `probes`,
            `sequence_length`, `batch_size`, `max_characters`).
    """

    def __init__(self, threshold: float = 1.1, action: str = "warn", tokenizer=None, **kwargs):
        super().__init__()
        if action not in ("warn", "stop"):
            raise ValueError(f"`action` must be 'warn' or 'stop'. Received: action={action!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            threshold > 0 and math.isfinite(threshold)
        ):
            raise ValueError(f"`threshold` must be a positive number. Received: threshold={threshold!r}")
        self.threshold = float(threshold)
        self.action = action
        self.kwargs = {**kwargs, "tokenizer": tokenizer}
        self.base_scores = None
        self.ratios = []

    def on_train_begin(self, logs=None):
        self.base_scores = forgetting(self.model, **self.kwargs)["base"]

    def on_epoch_end(self, epoch, logs=None):
        result = forgetting(self.model, base=self.base_scores, **self.kwargs)
        self.ratios.append(result["ratio"])
        if logs is not None:
            logs["forgetting_ratio"] = result["ratio"]
            if "probe_accuracy" in result:
                logs["forgetting_probe_accuracy"] = result["probe_accuracy"]
        if result["ratio"] > self.threshold:
            message = (f"Epoch {epoch + 1}: perplexity on general text is {result['ratio']:.3f}x "
                       f"the base's ({result['perplexity']:.2f} vs "
                       f"{self.base_scores['perplexity']:.2f}), above threshold={self.threshold}")
            if self.action == "stop":
                print(message + "; stopping.")
                self.model.stop_training = True
            else:
                warnings.warn(message, stacklevel=2)
