"""Tokenisation and loss masks for instruction examples.

An *example* here is a pair of equal-length 1-D arrays:

- `ids` (int32): `[BOS] + prompt tokens + response tokens + [EOS]`;
- `target_weights` (float32): for every token, whether the model is trained to
  predict it: 0 for BOS and prompt tokens, 1 for response tokens and EOS.

`kerasft.data.batches` turns examples into `(x, y, sample_weight)` batches
with `y[t] = ids[t + 1]` and `sample_weight[t] = target_weights[t + 1]`.
"""

from typing import Sequence

import numpy as np

from kerasft.data.loaders import get_field
from kerasft.data.templates import get_template

TRUNCATE_MODES = ("error", "response")


def _special_id(tokenizer, attribute):
    value = getattr(tokenizer, attribute, None)
    if value is None:
        raise ValueError(
            f"The tokenizer has no `{attribute}`; kerasft.data needs start, end "
            f"and pad token ids. Received: tokenizer={type(tokenizer).__name__}"
        )
    return int(value)


def special_token_ids(tokenizer) -> tuple[int, int, int]:
    """Returns `(bos_id, eos_id, pad_id)` of a keras-hub tokenizer.

    Args:
        tokenizer: A keras-hub tokenizer such as `Gemma3Tokenizer`.

    Raises:
        ValueError: If one of the ids is not defined.
    """
    return (
        _special_id(tokenizer, "start_token_id"),
        _special_id(tokenizer, "end_token_id"),
        _special_id(tokenizer, "pad_token_id"),
    )


def _as_id_lists(output) -> list[list[int]]:
    if hasattr(output, "to_list"):  # tf.RaggedTensor (tensorflow backend).
        output = output.to_list()
    elif hasattr(output, "numpy") and not isinstance(output, np.ndarray):
        output = output.numpy()
    if isinstance(output, np.ndarray):
        if output.ndim == 1:  # A single string.
            return [output.tolist()]
        return output.tolist()
    return [list(map(int, ids)) for ids in output]


# Above this many strings a progress bar is shown by default: tokenising the
# 20,000 WordNet prompts and responses takes seconds on two cores.
PROGRESS_MIN_TEXTS = 8192


def tokenize_texts(
    tokenizer, texts: Sequence[str], chunk_size: int = 1024, progress: bool | None = None
) -> list[np.ndarray]:
    """Tokenises strings with a keras-hub tokenizer, without special tokens.

    Args:
        tokenizer: A keras-hub tokenizer; called on lists of strings.
        texts: The strings.
        chunk_size: How many strings to tokenise per call.
        progress: Show a progress bar over the strings; None: only for more
            than `PROGRESS_MIN_TEXTS` strings.

    Returns:
        One int32 array of token ids per string (an empty string gives an
        empty array).
    """
    texts = list(texts)
    result = []
    bar = None
    if progress or (progress is None and len(texts) > PROGRESS_MIN_TEXTS):
        import keras

        bar = keras.utils.Progbar(len(texts), unit_name="string")
    for start in range(0, len(texts), chunk_size):
        chunk = texts[start : start + chunk_size]
        ids = _as_id_lists(tokenizer(chunk))
        if len(ids) != len(chunk):
            raise ValueError(
                f"The tokenizer returned {len(ids)} sequences for {len(chunk)} "
                f"strings. Received: tokenizer={type(tokenizer).__name__}"
            )
        result.extend(np.asarray(i, dtype="int32").reshape(-1) for i in ids)
        if bar is not None:
            bar.update(len(result))
    return result


def encode_instruction_examples(
    records: Sequence[dict],
    tokenizer,
    template="gemma",
    sequence_length: int | None = None,
    truncate: str = "error",
    prompt_key: str = "prompt",
    response_key: str = "response",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenises (prompt, response) records into examples with loss masks.

    Prompt text and response text are tokenised separately and concatenated,
    so the prompt tokens are exactly what the model sees at generation time.

    Args:
        records: Dicts with `prompt_key` and `response_key` string fields.
        tokenizer: A keras-hub tokenizer (e.g. `Gemma3Tokenizer`).
        template: A template name (`"gemma"`, `"instruction"`) or a
            `PromptTemplate`.
        sequence_length: The model input length `T`. An example may hold at
            most `T + 1` tokens (inputs are its first `T`, labels its last
            `T`). `None` skips the check.
        truncate: What to do with an example longer than `T + 1` tokens:
            `"error"` raises; `"response"` cuts the end of the response (and
            drops EOS, so the model is not taught to stop mid-answer).
        prompt_key: Field holding the prompt.
        response_key: Field holding the response.

    Returns:
        A list of `(ids, target_weights)` array pairs, one per record.

    Raises:
        ValueError: If `records` is empty, `truncate` is unknown, or an
            example does not fit (the message names the record index and its
            length).
        KeyError: If a record lacks `prompt_key` or `response_key`.
    """
    if truncate not in TRUNCATE_MODES:
        raise ValueError(
            f"`truncate` must be one of {TRUNCATE_MODES}. Received: truncate={truncate!r}"
        )
    if sequence_length is not None and (
        not isinstance(sequence_length, (int, np.integer)) or sequence_length < 1
    ):
        raise ValueError(
            "`sequence_length` must be a positive integer. Received: "
            f"sequence_length={sequence_length!r}"
        )
    if len(records) == 0:
        raise ValueError("No records to encode. Received: records with 0 elements")
    template = get_template(template)
    bos_id, eos_id, _ = special_token_ids(tokenizer)

    prompts, responses = [], []
    for index, record in enumerate(records):
        prompt_text, response_text = template.render(
            get_field(record, prompt_key, index), get_field(record, response_key, index)
        )
        prompts.append(prompt_text)
        responses.append(response_text)
    prompt_ids = tokenize_texts(tokenizer, prompts)
    response_ids = tokenize_texts(tokenizer, responses)

    capacity = None if sequence_length is None else int(sequence_length) + 1
    examples = []
    for index, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        eos = [eos_id]
        length = 1 + len(p) + len(r) + 1
        if capacity is not None and length > capacity:
            room = capacity - 1 - len(p)  # Response tokens that still fit.
            if truncate == "error" or room < 1:
                hint = (
                    "pass truncate='response' or a larger sequence_length"
                    if truncate == "error"
                    else "the prompt alone leaves no room for a response token"
                )
                raise ValueError(
                    f"Record {index} has {length} tokens (BOS + {len(p)} prompt + "
                    f"{len(r)} response + EOS) but sequence_length={sequence_length} "
                    f"holds at most {capacity} ({hint})."
                )
            r, eos = r[:room], []
        ids = np.concatenate([[bos_id], p, r, eos]).astype("int32")
        weights = np.zeros(len(ids), dtype="float32")
        weights[1 + len(p) :] = 1.0
        examples.append((ids, weights))
    return examples
