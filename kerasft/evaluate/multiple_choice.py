"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness does it.

Each question has a context and a list of options; the model's answer is the
option whose tokens are most likely after the context:

- `acc`: the option with the largest sum of token log-probabilities;
- `acc_norm`: that sum divided by the option's length in UTF-8 bytes
  (lm-eval's `acc_norm`, which stops long options losing only for being long);
- `acc_token_norm`: divided by the option's number of tokens.

`continuation_scores` is the building block (also used by the forgetting
probes): the log-likelihood of a continuation after a context, and whether
greedy decoding would produce it. The context and the continuation are
tokenised separately and concatenated (lm-eval's convention), after the
tokenizer's start token.
"""

from typing import Sequence

import numpy as np

from kerasft.data.encoding import special_token_ids, tokenize_texts
from kerasft.evaluate._progress import Progress, no_grad
from kerasft.evaluate.logits import model_logits


def _forward(model):
    """`model`'s float32 numpy logits on one batch; one `jax.jit` trace per call on JAX.

    Eager JAX compiles every op on first use, which costs more than the model
    on small evaluations. The trace is not cached between calls: it bakes in
    Python state such as whether adapters are switched off
    (`kerasft.adapters_disabled`).
    """
    import keras

    if keras.config.backend() != "jax":
        return lambda x: model_logits(model, x)
    import jax

    logits = jax.jit(lambda trainable, non_trainable, x: model.stateless_call(
        trainable, non_trainable, x, training=False)[0])

    def call(x):
        result = logits([v.value for v in model.trainable_variables],
                        [v.value for v in model.non_trainable_variables], x)
        return np.asarray(result, "float32")

    return call


def _check_tokenizer(model, tokenizer):
    tokenizer = tokenizer or getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "`tokenizer` is required when the model has no preprocessor. Received: "
            f"tokenizer=None, model.preprocessor={getattr(model, 'preprocessor', None)!r}"
        )
    return tokenizer


def continuation_scores(
    model,
    pairs: Sequence[tuple[str, str]],
    tokenizer=None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[dict]:
    """Log-likelihood of each continuation after its context.

    Args:
        model: a keras-hub causal LM (called on `{"token_ids",
            "padding_mask"}`; its preprocessor is not used).
        pairs: `(context, continuation)` strings.
        tokenizer: a keras-hub tokenizer (default: `model.preprocessor.tokenizer`).
        batch_size: rows per forward pass.
        progress: whether to show a progress bar.

    Returns:
        One dict per pair: `logprob` (sum of the continuation's token
        log-probabilities, float), `tokens` (its token count) and `greedy`
        (whether every continuation token is the argmax after the tokens
        before it, i.e. greedy decoding from the context produces it).

    Raises:
        ValueError: for a continuation that tokenises to nothing, or a
            non-positive `batch_size`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    tokenizer = _check_tokenizer(model, tokenizer)
    pairs = [(str(c), str(o)) for c, o in pairs]
    bos_id, _, pad_id = special_token_ids(tokenizer)
    contexts = tokenize_texts(tokenizer, [c for c, _ in pairs])
    continuations = tokenize_texts(tokenizer, [o for _, o in pairs])
    rows = []
    for index, (context, continuation) in enumerate(zip(contexts, continuations)):
        if len(continuation) == 0:
            raise ValueError(
                "Every continuation must have at least one token. Received: "
                f"continuation={pairs[index][1]!r} (pair {index})"
            )
        rows.append((np.concatenate([[bos_id], context, continuation]).astype("int32"),
                     1 + len(context)))
    # One padded length for all batches: a compiled forward pass sees one shape.
    length = max(len(ids) for ids, _ in rows) - 1
    bar = Progress(-(-len(rows) // batch_size), progress, unit_name="batch")
    forward = _forward(model)
    results = []
    with no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            # Every batch has `batch_size` rows (padding rows are masked out).
            token_ids = np.full((batch_size, length), pad_id, "int32")
            mask = np.zeros((batch_size, length), bool)
            for row, (ids, _) in enumerate(chunk):
                token_ids[row, : len(ids) - 1] = ids[:-1]
                mask[row, : len(ids) - 1] = True
            logits = forward({"token_ids": token_ids, "padding_mask": mask})[: len(chunk)]
            logits = logits.astype("float64")
            shifted = logits - logits.max(axis=-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            for row, (ids, first) in enumerate(chunk):
                # Position t predicts token t + 1: the continuation starts at `first`.
                positions = np.arange(first - 1, len(ids) - 1)
                targets = ids[first:]
                row_log_probs = log_probs[row, positions]
                results.append({
                    "logprob": float(row_log_probs[np.arange(len(targets)), targets].sum()),
                    "tokens": int(len(targets)),
                    "greedy": bool(np.all(np.argmax(row_log_probs, axis=-1) == targets)),
                })
            bar.update()
    bar.finish()
    return results


def _check_questions(questions):
    checked = []
    for index, question in enumerate(questions):
        if not isinstance(question, dict) or not {"context", "options", "answer"} <= set(question):
            raise ValueError(
                "Every question must be a dict with 'context', 'options' and 'answer'. "
                f"Received: question {index} = {question!r}"
            )
        options, answer = list(question["options"]), question["answer"]
        if len(options) < 2:
            raise ValueError(f"A question needs at least two options. Received: options={options!r} "
                             f"(question {index})")
        if isinstance(answer, str):
            if answer not in options:
                raise ValueError(f"`answer` must be one of the options or an index. Received: "
                                 f"answer={answer!r}, options={options!r} (question {index})")
            answer = options.index(answer)
        if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)) or not (
            0 <= answer < len(options)
        ):
            raise ValueError(f"`answer` must index the options. Received: answer={answer!r} "
                             f"with {len(options)} options (question {index})")
        checked.append((str(question["context"]), [str(o) for o in options], int(answer)))
    if not checked:
        raise ValueError("No questions to score. Received: questions with 0 elements")
    return checked


def multiple_choice(
    model,
    questions: Sequence[dict],
    tokenizer=None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Accuracy of a causal LM on multiple-choice questions, by option log-likelihood.

    Args:
        model: a keras-hub causal LM.
        questions: dicts `{"context": str, "options": [str, ...], "answer": int
            | str}` (`answer`: the index of the right option, or the option
            itself). An option is scored as written after the context, so
            include its leading space (`" Paris"`) as lm-eval tasks do.
        tokenizer: a keras-hub tokenizer (default: the model's).
        batch_size: rows (question x option) per forward pass.
        progress: whether to show a progress bar.

    Returns:
        `{"acc", "acc_norm", "acc_token_norm", "questions", "predictions",
        "predictions_norm", "predictions_token_norm", "logprobs"}`: the three
        accuracies (floats), the number of questions, the chosen option index
        per question for each rule, and the per-option log-likelihoods.

    Raises:
        ValueError: for a malformed question (naming its index).
    """
    checked = _check_questions(questions)
    pairs = [(context, option) for context, options, _ in checked for option in options]
    scores = continuation_scores(model, pairs, tokenizer, batch_size, progress)
    predictions = {"": [], "_norm": [], "_token_norm": []}
    logprobs = []
    position = 0
    for context, options, _ in checked:
        own = scores[position : position + len(options)]
        position += len(options)
        summed = np.array([s["logprob"] for s in own])
        logprobs.append(summed.tolist())
        predictions[""].append(int(np.argmax(summed)))
        predictions["_norm"].append(
            int(np.argmax(summed / np.array([len(o.encode("utf-8")) for o in options])))
        )
        predictions["_token_norm"].append(int(np.argmax(summed / np.array([s["tokens"] for s in own]))))
    answers = np.array([answer for _, _, answer in checked])
    result = {f"acc{key}": float(np.mean(np.array(chosen) == answers))
              for key, chosen in predictions.items()}
    result.update({"questions": len(checked), "logprobs": logprobs,
                   **{f"predictions{key}": chosen for key, chosen in predictions.items()}})
    return result
