"""Batched greedy generation on held-out prompts, scored against references."""

import weakref
from collections.abc import Sequence

import keras
import keras_hub
import numpy as np

from kerasft.evaluate._progress import Progress
from kerasft.evaluate.rouge import rouge_l, rouge_n
from kerasft.evaluate.text_metrics import bleu, describe_metrics, exact_match, token_f1


def generate_and_score(
    model: keras.Model,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
    stop_token_ids="auto",
    use_stemmer: bool = False,
    progress: bool = True,
) -> dict:
    """Greedily completes each prompt and scores it against its reference.

    Generation uses the model's compiled generate function with a
    `keras_hub.samplers.GreedySampler`, `batch_size` prompts at a time. Each
    output is decoded from its token ids with `decode_generated`: without the
    prompt, cut at the first stop token, and without any special token
    (`<eos>`, `<pad>`, `<bos>`, `<start_of_turn>`, `<end_of_turn>`...), so a
    model that learned to stop is not scored on its stop marker. The model's
    own sampler is put back afterwards. The last batch is filled up to
    `batch_size` with copies of its last prompt (their outputs are dropped),
    so on JAX every batch has one shape and the generate function is compiled
    once.

    Metrics (see `kerasft.evaluate.describe_metrics`): `exact_match` and
    `token_f1` as the SQuAD v1.1 script, `rouge_1`, `rouge_2` and `rouge_l`
    as `rouge-score`'s F-measure, each the mean over examples; `bleu` is
    sacreBLEU's corpus BLEU over all outputs, on the [0, 1] scale.

    Args:
        model: A keras-hub `CausalLM` with a preprocessor attached.
        prompts: The prompts, already formatted with the chat template the
            model was trained with.
        references: One reference answer per prompt.
        max_length: Total length (prompt plus generated tokens) of the padded
            generation sequence, as in `CausalLM.generate`; `None` uses the
            preprocessor's `sequence_length`.
        batch_size: Prompts generated together.
        stop_token_ids: Token ids that end an output, or `"auto"`: the
            tokenizer's end token, plus `<end_of_turn>` where the vocabulary
            has it (as keras-hub's Gemma 3 `generate` does, and for Gemma too).
        use_stemmer: Whether ROUGE Porter-stems tokens (as `rouge-score`'s
            `use_stemmer`; needs NLTK).
        progress: Whether to show a `keras.utils.Progbar`.

    Returns:
        A dict with `outputs` (the decoded texts, in prompt order),
        `output_token_ids` (for each prompt the generated token ids as ints,
        before decoding: the stop token included when one was generated),
        `per_example` (for each prompt a dict with `prompt`, `reference`,
        `output`, `output_token_ids`, `exact_match`, `token_f1`, `rouge_1`,
        `rouge_2` and `rouge_l`), the means over examples of `exact_match`,
        `token_f1`, `rouge_1`, `rouge_2` and `rouge_l`, the corpus `bleu`
        (all floats in [0, 1]), and `metrics`, the `describe_metrics` line.

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

    outputs, output_token_ids = _generate_greedy(
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
            "output_token_ids": ids,
            "exact_match": exact_match(output, reference),
            "token_f1": token_f1(output, reference),
            "rouge_1": rouge_n(output, reference, 1, use_stemmer=use_stemmer),
            "rouge_2": rouge_n(output, reference, 2, use_stemmer=use_stemmer),
            "rouge_l": rouge_l(output, reference, use_stemmer=use_stemmer),
        }
        for prompt, reference, output, ids in zip(prompts, references, outputs, output_token_ids)
    ]

    def mean(key):
        return sum(example[key] for example in per_example) / len(per_example)

    return {
        "outputs": outputs,
        "output_token_ids": output_token_ids,
        "per_example": per_example,
        **{key: mean(key) for key in ("exact_match", "token_f1", "rouge_1", "rouge_2", "rouge_l")},
        "bleu": bleu(outputs, list(references)),
        "metrics": describe_metrics(use_stemmer=use_stemmer),
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

    Each completion ends before its stop token and holds no special token
    (see `decode_generated`); `generate_and_score` also returns the token ids.

    Args:
        model: A keras-hub `CausalLM` with a preprocessor attached.
        prompts: The prompts.
        max_length: Total sequence length for `generate` (see
            `generate_and_score`).
        batch_size: Prompts generated together.
        stop_token_ids: Token ids that end a completion, `"auto"` (see
            `generate_and_score`) or None to generate up to `max_length`.
        progress: Whether to show a `keras.utils.Progbar`.

    Returns:
        The generated texts, one per prompt, in order.
    """
    outputs, _ = _generate_greedy(
        model,
        prompts,
        max_length=max_length,
        batch_size=batch_size,
        stop_token_ids=stop_token_ids,
        progress=progress,
    )
    return outputs


def _generate_greedy(model, prompts, *, max_length, batch_size, stop_token_ids, progress):
    """Greedy decoded texts and generated token ids (lists of ints), per prompt."""
    prompts = list(prompts)
    preprocessor = model.preprocessor
    tokenizer = preprocessor.tokenizer
    stop_token_ids = resolve_stop_token_ids(tokenizer, stop_token_ids)
    saved_sampler = getattr(model, "sampler", None)
    saved_generate_function = getattr(model, "generate_function", None)
    # Setting the sampler directly (as `CausalLM.compile` does) leaves the
    # user's optimizer, loss and metrics alone. The greedy sampler and the
    # generate function compiled with it are kept per model, so a second
    # evaluation (e.g. after every epoch) does not compile again.
    # A recipe applied since the last call changes the model's variables;
    # the cached function is then dropped rather than trusted to retrace.
    from kerasft.adapter_switch import switch_count

    # An adapter switch changes what the trace computes, not the variables.
    signature = (_variables_signature(model), switch_count())
    cached_signature, sampler, function = _GREEDY.get(model, (None, None, None))
    if cached_signature != signature:
        sampler, function = keras_hub.samplers.GreedySampler(), None
    model.sampler, model.generate_function = sampler, function
    bar = Progress(len(prompts), progress, unit_name="prompt")
    outputs, output_token_ids = [], []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            filled = batch + [batch[-1]] * (batch_size - len(batch))
            # The preprocessing `CausalLM.generate` does, then the token ids
            # themselves (rather than `generate`'s decoded text, which keeps
            # `<end_of_turn>` and cannot say where the output stopped).
            inputs = preprocessor.generate_preprocess(filled, sequence_length=max_length)
            prompt_mask = _numpy(inputs["padding_mask"]).astype(bool)
            generated = generate_token_ids(
                model,
                {"token_ids": _numpy(inputs["token_ids"]), "padding_mask": prompt_mask},
                stop_token_ids=stop_token_ids,
            )
            for row in range(len(batch)):
                # Prompts are left-aligned: what follows the prompt and is
                # still in the mask (up to and including a stop token) is the
                # output.
                keep = generated["padding_mask"][row] & ~prompt_mask[row]
                ids = [int(t) for t in generated["token_ids"][row][keep]]
                output_token_ids.append(ids)
                outputs.append(decode_generated(tokenizer, ids, stop_token_ids=stop_token_ids))
            bar.update(len(batch))
        _GREEDY[model] = (signature, model.sampler, model.generate_function)
    finally:
        model.sampler = saved_sampler
        model.generate_function = saved_generate_function
    return outputs, output_token_ids


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


# Gemma's chat-turn markers: ordinary vocabulary entries to keras-hub (not in
# `tokenizer.special_tokens`), yet never part of an answer's text.
_CHAT_MARKERS = ("<start_of_turn>", "<end_of_turn>")


def _vocabulary_id(tokenizer, token):
    """The id of `token` if the vocabulary has it as one piece, else None."""
    try:
        token_id = int(tokenizer.token_to_id(token))
        # SentencePiece gives the `<unk>` id for a missing piece.
        return token_id if tokenizer.id_to_token(token_id) == token else None
    except (KeyError, ValueError, TypeError, AttributeError, IndexError):
        return None


def special_token_ids(tokenizer) -> frozenset[int]:
    """The ids that never belong in decoded, scored text.

    The tokenizer's own special tokens (`special_token_ids`: for Gemma and
    Gemma 3 `<bos>`, `<eos>`, `<pad>`, and the image tokens of a vision
    Gemma 3), `start_token_id`, `end_token_id`, `pad_token_id` and
    `end_token2_id` where set, and `<start_of_turn>` / `<end_of_turn>` where
    the vocabulary has them.

    Args:
        tokenizer: A keras-hub tokenizer.

    Returns:
        The ids.
    """
    ids = set()
    try:
        ids.update(int(t) for t in getattr(tokenizer, "special_token_ids", ()) or ())
    except ValueError:  # keras-hub: no vocabulary set yet
        pass
    for name in ("start_token_id", "end_token_id", "pad_token_id", "end_token2_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            ids.add(int(token_id))
    for marker in _CHAT_MARKERS:
        token_id = _vocabulary_id(tokenizer, marker)
        if token_id is not None:
            ids.add(token_id)
    return frozenset(ids)


def resolve_stop_token_ids(tokenizer, stop_token_ids="auto") -> tuple[int, ...] | None:
    """The stop ids that `stop_token_ids="auto"` (or a given list) means.

    `"auto"` is the tokenizer's `end_token_id` (and `end_token2_id` where
    set, as keras-hub's `CausalLM.generate`), plus `<end_of_turn>` where the
    vocabulary has it (keras-hub adds it for Gemma 3 only; evaluation of
    chat-formatted prompts stops there on Gemma too).

    Args:
        tokenizer: A keras-hub tokenizer.
        stop_token_ids: `"auto"`, None (no stop token) or token ids.

    Returns:
        A tuple of ids, or None.
    """
    if stop_token_ids is None:
        return None
    if isinstance(stop_token_ids, str):
        if stop_token_ids != "auto":
            raise ValueError(
                "`stop_token_ids` must be 'auto', None or a sequence of token ids. "
                f"Received: stop_token_ids={stop_token_ids!r}"
            )
        ids = [getattr(tokenizer, name, None) for name in ("end_token_id", "end_token2_id")]
        ids.append(_vocabulary_id(tokenizer, "<end_of_turn>"))
        return tuple(dict.fromkeys(int(t) for t in ids if t is not None))
    return tuple(int(t) for t in stop_token_ids)


def decode_generated(tokenizer, token_ids: Sequence[int], *, stop_token_ids=()) -> str:
    """The text of generated token ids, as it should be shown and scored.

    The ids are cut before the first stop token, every id in
    `special_token_ids(tokenizer)` is dropped, and the rest is detokenized.
    Working on ids (not on the decoded text) means a marker is removed
    whatever text it decodes to, and a word that merely contains such text
    is kept.

    Args:
        tokenizer: A keras-hub tokenizer.
        token_ids: The generated ids (without the prompt).
        stop_token_ids: Ids that end the output (see
            `resolve_stop_token_ids`); None or empty for none.

    Returns:
        The decoded text.
    """
    stops = set(int(t) for t in stop_token_ids or ())
    ids = []
    for token_id in token_ids:
        token_id = int(token_id)
        if token_id in stops:
            break
        ids.append(token_id)
    skip = special_token_ids(tokenizer)
    ids = [token_id for token_id in ids if token_id not in skip]
    if not ids:
        return ""
    return _to_str(tokenizer.detokenize([ids])[0])


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
