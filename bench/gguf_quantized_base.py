"""The GGUF-quantized frozen base on the real Gemma 3 270M (Q4_K_M) against the float load.

Prints, for `gemma3_from_gguf()` (every tensor dequantized to float32) and
`gemma3_from_gguf(keep_quantized=True)` (the file's Q5_0/Q4_K/Q6_K/Q8_0 blocks,
dequantized on the fly):

- the max absolute logit difference on a held-out text (`--length` tokens);
- the bytes of all weights of each model, and their ratio;
- the LoRA train-step time over each base (same batch, after a warm-up step),
  and their ratio (contended CPU figures: compare the ratio, not the times).

Run under the shared lock (the float model needs ~5 GiB):

    flock /tmp/kerasft-real.lock timeout 900 python bench/gguf_quantized_base.py
"""

import argparse
import gc
import pathlib
import time

import keras
import numpy as np

from kerasft.evaluate import model_logits
from kerasft.models import gemma3_from_gguf
from kerasft.recipes import LoRA

TEXT = pathlib.Path(__file__).parents[1] / "tests" / "models" / "data" / "us_founding_texts.txt"


def weight_bytes(model):
    return sum(
        int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in model.weights
    )


def token_batch(model, length, rows=2):
    ids = keras.ops.convert_to_numpy(model.preprocessor.tokenizer(TEXT.read_text())).tolist()
    ids = [2] + ids
    token_ids = np.array([ids[i * length : (i + 1) * length] for i in range(rows)], dtype="int32")
    return {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, dtype=bool)}


def step_time(model, batch, steps):
    recipe = LoRA(rank=8, alpha=16.0, targets=("query", "value"))
    recipe.apply(model)
    recipe.compile(model, learning_rate=1e-4)
    model.preprocessor = None
    x = dict(batch)
    y = np.roll(x["token_ids"], -1, axis=1)
    w = np.ones_like(y, dtype="float32")
    model.fit(x, y, sample_weight=w, batch_size=len(y), epochs=1, verbose=0)  # compile
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.fit(x, y, sample_weight=w, batch_size=len(y), epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-steps", action="store_true", help="skip the step timing")
    args = parser.parse_args()

    results = {}
    for name, keep in (("float", False), ("gguf", True)):
        start = time.perf_counter()
        model = gemma3_from_gguf(keep_quantized=keep)
        load = time.perf_counter() - start
        batch = token_batch(model, args.length)
        logits = model_logits(model, batch)
        results[name] = {"logits": logits, "bytes": weight_bytes(model), "load_s": load}
        if not args.no_steps:
            results[name]["step_s"] = step_time(model, batch, args.steps)
        del model
        gc.collect()
        step = f", LoRA step {results[name]['step_s']:.2f} s" if not args.no_steps else ""
        print(
            f"{name}: loaded in {load:.1f} s, weights {results[name]['bytes'] / 2**20:.1f} MiB{step}",
            flush=True,
        )

    difference = np.abs(results["gguf"]["logits"] - results["float"]["logits"]).max()
    print(f"backend: {keras.backend.backend()}, held-out tokens: 2 x {args.length}")
    print(f"max |logits(gguf) - logits(float)|: {difference:.3e}")
    print(f"weight bytes gguf / float32: {results['gguf']['bytes'] / results['float']['bytes']:.4f}")
    if not args.no_steps:
        f, g = results["float"]["step_s"], results["gguf"]["step_s"]
        print(f"LoRA step (median of {args.steps}): float {f:.2f} s, gguf {g:.2f} s, ratio {g / f:.2f}")


if __name__ == "__main__":
    main()
