"""Batched greedy generation on held-out prompts, scored against references."""

import weakref
from collections.abc import Sequence

import keras
import keras_hub
import numpy as np

from kerasft.evaluate._progress import Progress
from kerasft.evaluate.text_metrics import bleu, exact_match, rouge_l, token_f1


def generate_and_score(
    model: keras.Model,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    stop_token_ids="auto",
    progress: bool = True,
) -> dict:
    """Greedily completes each prompt and scores it against its reference.

    Generation uses the model's own `generate()` with a
    `keras_hub.samplers.GreedySampler`, `batch_size` prompts at a time, and
    strips the prompt from each output. The model's own sampler is put back
    afterwards. The last batch is filled up to `batch_size` with copies of its
    last prompt (their outputs are dropped), so on JAX every batch has one
    shape and the generate function is compiled once.

    Args:
        model: A keras-hub `CausalLM` with a preprocessor attached.
        prompts: The prompts, already formatted with the chat template the
            model was trained with.
        references: One reference answer per prompt.
        max_length: Total length (prompt plus generated tokens) of the padded
            generation sequence, as in `CausalLM.generate`; `None` uses the
            preprocessor's `sequence_length`.
        batch_size: Prompts generated together.
        stop_token_ids: Passed to `generate`; `"auto"` stops at the tokenizer's
            end token (and `<end_of_turn>` for Gemma 3).
        progress: Whether to show a `keras.utils.Progbar`.

    Returns:
        A dict with `outputs` (the generated texts, in prompt order),
        `per_example` (for each prompt a dict with `prompt`, `reference`,
        `output`, `exact_match`, `token_f1` and `rouge_l`), the means over
        examples of `exact_match`, `token_f1` and `rouge_l`, and the corpus
        `bleu` (see `kerasft.evaluate.bleu`), all floats in [0, 1].

    Raises:
        ValueError: If `model` has no preprocessor, `prompts` and
            `references` differ in length or are empty, or `batch_size` is not
            a positive integer.
    """
    if getattr(model, "preprocessor", None) is None:
        raise ValueError(
            "`model` must have a preprocessor attached to generate from text "
            f"prompts. Received: model={type(model).__name__} with preprocessor=None"
        )
    if isinstance(prompts, str) or isinstance(references, str):
        raise ValueError(
            "`prompts` and `references` must be sequences of strings, not one "
            f"string. Received: prompts={prompts!r}, references={references!r}"
        )
    if len(prompts) != len(references) or not prompts:
        raise ValueError(
            "`prompts` and `references` must be non-empty and of the same "
            f"length. Received: len(prompts)={len(prompts)}, "
            f"len(references)={len(references)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )

    outputs = greedy_generate(
        model,
        prompts,
        max_length=max_length,
        batch_size=batch_size,
        stop_token_ids=stop_token_ids,
        progress=progress,
    )
    per_example = [
        {
            "prompt": prompt,
            "reference": reference,
            "output": output,
            "exact_match": exact_match(output, reference),
            "token_f1": token_f1(output, reference),
            "rouge_l": rouge_l(output, reference),
        }
        for prompt, reference, output in zip(prompts, references, outputs)
    ]

    def mean(key):
        return sum(example[key] for example in per_example) / len(per_example)

    return {
        "outputs": outputs,
        "per_example": per_example,
        "exact_match": mean("exact_match"),
        "token_f1": mean("token_f1"),
        "rouge_l": mean("rouge_l"),
        "bleu": bleu(outputs, list(references)),
    }


# model -> (its variables' signature, its GreedySampler, the generate function
# compiled with them).
_GREEDY = weakref.WeakKeyDictionary()


def greedy_generate(
    model: keras.Model,
    prompts: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    stop_token_ids="auto",
    progress: bool = False,
) -> list[str]:
    """Greedy completions of `prompts`, without the prompts, in batches.

    Args:
        model: A keras-hub `CausalLM` with a preprocessor attached.
        prompts: The prompts.
        max_length: Total sequence length for `generate` (see
            `generate_and_score`).
        batch_size: Prompts generated together.
        stop_token_ids: Passed to `generate`.
        progress: Whether to show a `keras.utils.Progbar`.

    Returns:
        The generated texts, one per prompt, in order.
    """
    prompts = list(prompts)
    saved_sampler = getattr(model, "sampler", None)
    saved_generate_function = getattr(model, "generate_function", None)
    # Setting the sampler directly (as `CausalLM.compile` does) leaves the
    # user's optimizer, loss and metrics alone. The greedy sampler and the
    # generate function compiled with it are kept per model, so a second
    # evaluation (e.g. after every epoch) does not compile again.
    # A recipe applied since the last call changes the model's variables;
    # the cached function is then dropped rather than trusted to retrace.
    signature = _variables_signature(model)
    cached_signature, sampler, function = _GREEDY.get(model, (None, None, None))
    if cached_signature != signature:
        sampler, function = keras_hub.samplers.GreedySampler(), None
    model.sampler, model.generate_function = sampler, function
    bar = Progress(len(prompts), progress, unit_name="prompt")
    outputs = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            filled = batch + [batch[-1]] * (batch_size - len(batch))
            generated = model.generate(
                filled,
                max_length=max_length,
                stop_token_ids=stop_token_ids,
                strip_prompt=True,
            )
            outputs.extend(_to_str(text) for text in generated[: len(batch)])
            bar.update(len(batch))
        _GREEDY[model] = (signature, model.sampler, model.generate_function)
    finally:
        model.sampler = saved_sampler
        model.generate_function = saved_generate_function
    return outputs


def _variables_signature(model):
    """Which variables, trainable or not, the model holds (identity, not values)."""
    return (
        tuple(id(v) for v in model.trainable_variables),
        tuple(id(v) for v in model.non_trainable_variables),
    )


def _to_str(text):
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def generate_token_ids(model: keras.Model, inputs: dict, *, stop_token_ids=None) -> dict:
    """Token ids in, token ids out, with or without a preprocessor attached.

    keras-hub's `Gemma3CausalLM.generate` fails on token inputs when the model
    has no preprocessor (its text-only outputs carry `images=None`, which the
    output normalisation cannot concatenate). This calls the model's compiled
    generate function directly, so Gemma, Gemma 3 and other keras-hub causal
    LMs behave the same. Generation uses the model's sampler (set it with
    `model.compile(sampler=...)`) and fills the whole width of `token_ids`.

    Args:
        model: A keras-hub `CausalLM`.
        inputs: `{"token_ids": (batch, length) ints, "padding_mask": (batch,
            length) bools}`, prompts left-aligned and padded to the length to
            generate up to. Without `padding_mask`, non-zero ids are the prompt.
        stop_token_ids: Token ids that end a row, or None to fill every row.

    Returns:
        `{"token_ids", "padding_mask"}` as numpy arrays; the mask is False after
        a row's stop token.
    """
    if not isinstance(inputs, dict) or "token_ids" not in inputs:
        raise ValueError(
            "`inputs` must be a dict with 'token_ids' (and optionally "
            f"'padding_mask'). Received: inputs={type(inputs).__name__}"
        )
    token_ids = np.asarray(keras.ops.convert_to_numpy(inputs["token_ids"]))
    if token_ids.ndim != 2:
        raise ValueError(
            "`inputs['token_ids']` must have shape (batch, length). Received: "
            f"shape={token_ids.shape}"
        )
    padding_mask = inputs.get("padding_mask")
    padding_mask = token_ids != 0 if padding_mask is None else padding_mask
    padding_mask = np.asarray(keras.ops.convert_to_numpy(padding_mask)).astype(bool)
    if stop_token_ids is not None:
        stop_token_ids = tuple(int(t) for t in stop_token_ids)
    generate = model.make_generate_function()
    outputs = generate(
        {
            "token_ids": keras.ops.convert_to_tensor(token_ids.astype("int32")),
            "padding_mask": keras.ops.convert_to_tensor(padding_mask),
        },
        stop_token_ids=stop_token_ids,
    )
    return {
        key: np.asarray(keras.ops.convert_to_numpy(outputs[key]))
        for key in ("token_ids", "padding_mask")
    }
