"""Measure a GGUF Gemma 3 checkpoint loaded with `kerasft.models.gemma3_from_gguf`.

Prints the load time, the perplexity on a text file (default: the text the slow
test `tests/models/test_gemma3_real.py` uses) and a greedy continuation.

    KERAS_BACKEND=jax python scripts/measure_gguf_perplexity.py [--path FILE.gguf]
"""

import argparse
import pathlib
import time

import keras
import numpy as np

from kerasft.evaluate.perplexity import perplexity
from kerasft.models import gemma3_from_gguf

DEFAULT_TEXT = (
    pathlib.Path(__file__).resolve().parent.parent
    / "tests" / "models" / "data" / "us_founding_texts.txt"
)  # fmt: skip


def text_batch(causal_lm, text):
    """One `(x, y, sample_weight)` batch scoring every token of `text` after `<bos>`."""
    tokenizer = causal_lm.preprocessor.tokenizer
    ids = [tokenizer.start_token_id] + keras.ops.convert_to_numpy(tokenizer(text)).tolist()
    ids = np.asarray([ids], dtype="int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1], dtype=bool)}
    return x, ids[:, 1:], np.ones(ids[:, 1:].shape, dtype="float32")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", default=None, help="GGUF file (default: Gemma 3 270M Q4_K_M)")
    parser.add_argument("--text", default=str(DEFAULT_TEXT))
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--prompt", default="Water boils at a temperature of")
    parser.add_argument("--max-length", type=int, default=24)
    args = parser.parse_args()

    start = time.perf_counter()
    causal_lm = gemma3_from_gguf(args.path, dtype=args.dtype)
    print(f"backend={keras.backend.backend()} load_seconds={time.perf_counter() - start:.1f}")

    text = pathlib.Path(args.text).read_text(encoding="utf-8")
    start = time.perf_counter()
    result = perplexity(causal_lm, [text_batch(causal_lm, text)], progress=False)
    print(
        f"text={args.text} bytes={len(text.encode())} tokens={result['tokens']} "
        f"loss={result['loss']:.4f} perplexity={result['perplexity']:.3f} "
        f"seconds={time.perf_counter() - start:.1f}"
    )

    causal_lm.compile(sampler="greedy")
    start = time.perf_counter()
    output = causal_lm.generate(args.prompt, max_length=args.max_length)
    print(f"generate_seconds={time.perf_counter() - start:.1f} output={output!r}")


if __name__ == "__main__":
    main()
