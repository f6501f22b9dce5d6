"""Perplexity of Gemma 3 270M after weight quantization, next to Keras's own.

Every `EinsumDense` of every decoder block is quantized (embedding / tied
output head kept in float); each scheme runs with round-to-nearest and with a
calibrated method (GPTQ or clipping search; by default on 16 pieces of 1,500
characters, about 330 tokens each, of Shakespeare's training plays).
Keras's `model.quantize("int8")`, `model.quantize("int4")` and
`model.quantize("gptq", config=keras.quantizers.GPTQConfig(...))` (int4,
group 64, symmetric, on the same calibration tokens), filtered to the same
decoder-block layers, run in the same process. Held-out text: the Shakespeare
validation play. Each row gives the wall-clock time of quantizing and of
evaluating, and the quantizing time as a multiple of one compiled forward
pass of the float model over the calibration texts (measured once, after a
warm-up pass that compiles it).

    KERAS_BACKEND=jax python bench/quantization_perplexity.py --max-tokens 1024

Note: the default checkpoint is the Q4_K_M GGUF, dequantized to float32; that
float model is the reference ("float") every row is compared against.
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import gc
import time

import numpy as np


def token_rows(tokenizer, texts, max_tokens, sequence_length, bos_id):
    """`(x, y, sample_weight)` rows of `sequence_length` scored tokens."""
    stream = []
    for text in texts:
        ids = np.asarray(tokenizer(text)).reshape(-1).tolist()
        stream.extend([bos_id] + ids)
        if len(stream) > max_tokens + max_tokens // sequence_length + 1:
            break
    rows = []
    start = 0
    scored = 0
    while scored < max_tokens and start + 1 < len(stream):
        length = min(sequence_length, max_tokens - scored, len(stream) - start - 1)
        row = stream[start : start + length + 1]
        rows.append(row)
        scored += length
        start += length
    batch_x, batch_y, batch_w = [], [], []
    for row in rows:
        ids = np.zeros(sequence_length + 1, "int32")
        ids[: len(row)] = row
        weight = np.zeros(sequence_length, "float32")
        weight[: len(row) - 1] = 1.0
        batch_x.append(ids[:-1])
        batch_y.append(ids[1:])
        batch_w.append(weight)
    return [
        (
            {"token_ids": np.stack([x]), "padding_mask": np.stack([w > 0])},
            np.stack([y]),
            np.stack([w]),
        )
        for x, y, w in zip(batch_x, batch_y, batch_w)
    ]


def calibration_pieces(texts, count, characters):
    """`count` consecutive pieces of `characters` characters, cut from the start of `texts`."""
    pieces = []
    for text in texts:
        for start in range(0, len(text) - characters + 1, characters):
            pieces.append(text[start : start + characters])
            if len(pieces) == count:
                return pieces
    return pieces


def piece_batches(tokenizer, pieces, bos_id, batch_size=8):
    """Token batches `{"token_ids", "padding_mask"}` of the pieces (BOS first), padded
    to the longest piece."""
    rows = [[bos_id] + np.asarray(tokenizer(p)).reshape(-1).tolist() for p in pieces]
    length = max(len(row) for row in rows)
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids = np.zeros((len(chunk), length), "int32")
        mask = np.zeros((len(chunk), length), bool)
        for i, row in enumerate(chunk):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        batches.append({"token_ids": ids, "padding_mask": mask})
    return batches


def in_decoder_block(layer):
    import keras

    return isinstance(layer, (keras.layers.EinsumDense, keras.layers.Dense)) and (
        "decoder_block" in layer.path
    )


def keras_quantize(model, mode, calibration=None, tokenizer=None, group_size=64):
    """Keras's own quantization, on the decoder-block dense layers only.

    `mode="gptq"`: `GPTQConfig` int4 with `group_size`, symmetric, on the
    calibration token rows (one sample per row, its real tokens only).
    """
    import keras

    if mode != "gptq":
        model.quantize(mode, filters=in_decoder_block)
        return
    samples = [
        batch["token_ids"][row][batch["padding_mask"][row]]
        for batch in calibration
        for row in range(len(batch["token_ids"]))
    ]
    config = keras.quantizers.GPTQConfig(
        dataset=samples,
        tokenizer=tokenizer,
        weight_bits=4,
        num_samples=len(samples),
        sequence_length=min(len(s) for s in samples),
        group_size=group_size,
        symmetric=True,
    )
    model.quantize("gptq", config=config, filters=in_decoder_block)


def forward_seconds(model, calibration, rows=4):
    """Seconds of one compiled forward pass (`predict_on_batch`, logits included) over
    the calibration batches, `rows` rows at a time (the 262,144-wide float32 logits
    of 8 rows take 2.9 GB), after a warm-up pass that compiles it; and the warm-up's
    seconds."""
    pieces = [
        {key: value[start : start + rows] for key, value in batch.items()}
        for batch in calibration
        for start in range(0, len(batch["token_ids"]), rows)
    ]
    seconds = []
    preprocessor = getattr(model, "preprocessor", None)
    model.preprocessor = None  # the pieces are token ids already
    try:
        for _ in range(2):
            start = time.time()
            for piece in pieces:
                np.asarray(model.predict_on_batch(piece))
            seconds.append(time.time() - start)
    finally:
        model.preprocessor = preprocessor
    return seconds[1], seconds[0]


def configurations(calibration_method):
    """`(label, kind, kwargs)` rows of the table: the fast rows first."""
    schemes = [
        ("int8 per-channel", dict(mode="int8", group_size=None)),
        ("int4 g64 sym", dict(mode="int4", group_size=64)),
        ("int4 g64 asym", dict(mode="int4", group_size=64, asymmetric=True)),
        ("nf4 g64", dict(mode="nf4", group_size=64)),
        ("nf4 g64 +dq", dict(mode="nf4", group_size=64, double_quantize=True)),
    ]
    rows = [("float", "float", {})]
    rows += [(f"{label} rtn", "kerasft", dict(scheme, method="rtn")) for label, scheme in schemes]
    rows.append(("keras int8 (model.quantize)", "keras", {"mode": "int8"}))
    rows.append(("keras int4 (model.quantize)", "keras", {"mode": "int4"}))
    # Calibrated rows last, 4-bit first: they take minutes each on a CPU.
    rows += [
        (f"{label} {calibration_method}", "kerasft", dict(scheme, method=calibration_method))
        for label, scheme in schemes[1:] + schemes[:1]
    ]
    # Keras's GPTQ is the slowest row: last.
    rows.append(("keras int4 g64 sym gptq (GPTQConfig)", "keras", {"mode": "gptq"}))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="GGUF path (default: the 270M package)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (smoke test)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="scored held-out tokens")
    parser.add_argument(
        "--calibration-texts", type=int, default=16,
        help="calibration pieces of --calibration-chars characters (0: use --calibration-tokens)",
    )
    parser.add_argument("--calibration-chars", type=int, default=1500)
    parser.add_argument(
        "--calibration-tokens", type=int, default=512,
        help="with --calibration-texts 0: rows of --sequence-length tokens (the old setting)",
    )
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--calibration", default="gptq", choices=["gptq", "clip", "clip+gptq"])
    parser.add_argument("--only", default=None, help="comma-separated substrings of row labels")
    parser.add_argument(
        "--no-forward", action="store_true", help="skip timing the forward pass (no ratio column)"
    )
    args = parser.parse_args()

    import keras

    from kerasft.data import load_shakespeare
    from kerasft.evaluate.perplexity import perplexity
    from kerasft.quantization import quantize_model

    if args.tiny:
        from kerasft import testing
        from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

        real_tokenizer = tiny_gemma_tokenizer()

        class tokenizer:  # ids folded into the tiny model's vocabulary
            start_token_id = real_tokenizer.start_token_id

            def __new__(cls, text):
                ids = np.asarray(real_tokenizer(text))
                return ids % testing.TINY_VOCABULARY_SIZE

        def load():
            return testing.tiny_causal_lm("gemma3")

        group_note = "(tiny model: group 16)"
    else:
        from kerasft.models import gemma3_from_gguf

        start = time.time()
        tokenizer = gemma3_from_gguf(args.gguf).preprocessor.tokenizer
        print(f"load: {time.time() - start:.1f} s", flush=True)

        def load():
            return gemma3_from_gguf(args.gguf, dtype="float32")

        group_note = ""

    bos = tokenizer.start_token_id
    held_out = token_rows(
        tokenizer, load_shakespeare("validation"), args.max_tokens, args.sequence_length, bos
    )
    if args.calibration_texts:
        pieces = calibration_pieces(
            load_shakespeare("train"), args.calibration_texts, args.calibration_chars
        )
        calibration = piece_batches(tokenizer, pieces, bos)
    else:
        calibration = [
            x
            for x, _, _ in token_rows(
                tokenizer, load_shakespeare("train"), args.calibration_tokens,
                args.sequence_length, bos,
            )
        ]
    print(
        f"backend={keras.backend.backend()} held-out tokens="
        f"{sum(int(w.sum()) for *_, w in held_out)} calibration tokens="
        f"{sum(int(x['padding_mask'].sum()) for x in calibration)} {group_note}",
        flush=True,
    )

    forward_s = float("nan")
    if not args.no_forward:
        model = load()
        forward_s, first_s = forward_seconds(model, calibration)
        print(
            f"one compiled forward pass over the calibration batches: {forward_s:.1f} s "
            f"(the first, compiling: {first_s:.1f} s)",
            flush=True,
        )
        del model
        gc.collect()
        keras.backend.clear_session()

    results = []
    float_ppl = None
    for label, kind, kwargs in configurations(args.calibration):
        if args.only and label != "float" and not any(
            s in label for s in args.only.split(",")
        ):
            continue
        model = load()
        start = time.time()
        if kind == "kerasft":
            kwargs = dict(kwargs)
            if args.tiny and kwargs.get("group_size"):
                kwargs["group_size"] = 16
            calibration_data = calibration if kwargs["method"] != "rtn" else None
            quantize_model(model, calibration_data=calibration_data, progress=False, **kwargs)
        elif kind == "keras":
            keras_quantize(
                model, kwargs["mode"], calibration, tokenizer,
                group_size=16 if args.tiny else 64,
            )
        quantize_s = time.time() - start
        start = time.time()
        result = perplexity(model, held_out, progress=False)
        eval_s = time.time() - start
        if kind == "float":
            float_ppl = result["perplexity"]
        change = 100.0 * (result["perplexity"] / float_ppl - 1.0)
        results.append((label, result["perplexity"], change, quantize_s, eval_s))
        print(
            f"{label:38s} ppl={result['perplexity']:9.3f} ({change:+6.2f}%) "
            f"quantize {quantize_s:6.1f} s ({quantize_s / forward_s:5.1f}x forward), "
            f"eval {eval_s:6.1f} s",
            flush=True,
        )
        del model
        gc.collect()
        keras.backend.clear_session()

    print()
    print(f"forward pass over the calibration texts (compiled): {forward_s:.1f} s")
    print("| scheme | perplexity | vs float | quantize s | quantize / forward | eval s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, ppl, change, quantize_s, eval_s in results:
        print(
            f"| {label} | {ppl:.3f} | {change:+.2f}% | {quantize_s:.1f} | "
            f"{quantize_s / forward_s:.1f}x | {eval_s:.1f} |"
        )


if __name__ == "__main__":
    main()
