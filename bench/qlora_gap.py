"""Where QLoRA's perplexity gap to LoRA comes from, on the main job's adapter.

Puts the LoRA adapter trained on the float Gemma 3 270M (the main job,
`kerasft --config recipes/configs/sft_lora.yaml`, saved under
`runs/sft_lora/adapter`) over a quantized base and prints the held-out
response perplexity of the demo:

1. NF4 on one group of decoder kernels at a time (by kind, then by block),
   with `kerasft.quantization.quantization_sensitivity`;
2. the whole NF4 base with QLoRA's frozen low-rank correction of the
   quantization error (`residual_rank`), fitted on training activations, at
   each rank asked for.

A QLoRA run trained on the quantized base lands close to row 2 (35.27 for
rank 8 against 34.85 here), so the table is a quick stand-in for training.

    python -m kerasft.finetune --config recipes/configs/sft_lora.yaml   # once, writes the adapter
    KERAS_BACKEND=jax python bench/qlora_gap.py --ranks 8 32
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapter", default="runs/sft_lora/adapter")
    parser.add_argument("--mode", default="nf4", choices=["int8", "int4", "nf4"])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--no-double-quant", action="store_true")
    parser.add_argument("--eval-examples", type=int, default=48)
    parser.add_argument("--calibration-examples", type=int, default=128)
    parser.add_argument("--ranks", type=int, nargs="*", default=[8])
    parser.add_argument("--skip-sensitivity", action="store_true")
    args = parser.parse_args()

    import kerasft
    from kerasft import data
    from kerasft.adapters import WEIGHTS_FILE, load_tensors, read_adapter_config
    from kerasft.evaluate import perplexity
    from kerasft.models import gemma3_from_gguf
    from kerasft.quantization import quantization_sensitivity, sensitivity_table
    from kerasft.recipes import QLoRA
    from kerasft.recipes.lora import lora_layers

    scheme = dict(
        mode=args.mode, group_size=args.group_size, double_quantize=not args.no_double_quant
    )
    config = read_adapter_config(args.adapter)["recipe"]
    sequence_length = 48

    def batches(records, tokenizer):
        return data.instruction_batches(
            records, tokenizer, template="gemma", sequence_length=sequence_length,
            batch_size=8, shuffle=False, truncate="response",
        )

    held_out = data.load_wordnet("test")[: args.eval_examples]
    print(f"adapter {args.adapter} ({config['method']}), {scheme}", flush=True)

    if not args.skip_sensitivity:
        model = gemma3_from_gguf()
        kerasft.load_adapter(model, args.adapter)
        evaluation = batches(held_out, model.preprocessor.tokenizer)
        for by in ("kind", "block"):
            start = time.time()
            result = quantization_sensitivity(model, evaluation, by=by, **scheme)
            print(f"\n{args.mode} by {by} ({time.time() - start:.0f} s):")
            print(sensitivity_table(result), flush=True)
        float_ppl = result["float"]
        del model
    else:
        float_ppl = None

    tensors = load_tensors(os.path.join(args.adapter, WEIGHTS_FILE))
    train = data.load_wordnet("train")[: args.calibration_examples]
    print("\n| base | perplexity | change | relative output error |", flush=True)
    print("|---|---|---|---|")
    for rank in args.ranks:
        model = gemma3_from_gguf()
        calibration = batches(train, model.preprocessor.tokenizer)
        recipe = QLoRA(
            rank=config["rank"], alpha=config["alpha"], targets=config["targets"],
            quantization=args.mode, group_size=args.group_size,
            double_quant=not args.no_double_quant, residual_rank=rank,
        )
        recipe.apply(model, calibration_data=calibration if rank else None)
        for wrapper in lora_layers(model):
            wrapper.lora_a.assign(tensors[f"{wrapper.target_path}/lora_a"])
            wrapper.lora_b.assign(tensors[f"{wrapper.target_path}/lora_b"])
        value = perplexity(model, batches(held_out, model.preprocessor.tokenizer), progress=False)
        value = value["perplexity"]
        report = list(getattr(recipe, "initialization_report", {}).values())
        errors = "-" if not report else "{:.4f} -> {:.4f}".format(*np.mean(report, axis=0))
        change = "" if float_ppl is None else f"{100 * (value / float_ppl - 1):+.1f}%"
        print(
            f"| {args.mode} + rank-{rank} correction | {value:.2f} | {change} | "
            f"{errors} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
