"""LoRA training throughput and peak memory: kerasft vs keras-hub `enable_lora`.

Both variants train rank-8 LoRA on query and value of the same randomly
initialised Gemma 3 model with AdamW and the same loss, in separate
subprocesses (so each gets a clean peak-memory reading), and the script prints
tokens/s, peak memory and the kerasft/keras-hub ratios. With `--qlora` a third
variant trains the same LoRA over an NF4 base (group 64, double quantization,
every decoder kernel) and the script prints the QLoRA/LoRA ratios.

    python bench/lora_throughput.py               # small shape, runs on a CPU
    python bench/lora_throughput.py --full        # Gemma-3-1B shape, bf16, 8 x 1024 (GPU)
    python bench/lora_throughput.py --full --qlora

Peak memory is the accelerator's peak bytes in use on a GPU, and the peak
resident set size of the process on a CPU.
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import json
import subprocess
import sys
import time

FULL_SHAPE = dict(
    num_layers=26,
    hidden_dim=1152,
    num_query_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    intermediate_dim=6912,
    vocabulary_size=262144,
    batch_size=8,
    sequence_length=1024,
    dtype="bfloat16",
)
SMALL_SHAPE = dict(
    num_layers=4,
    hidden_dim=256,
    num_query_heads=4,
    num_key_value_heads=1,
    head_dim=64,
    intermediate_dim=1024,
    vocabulary_size=4096,
    batch_size=4,
    sequence_length=128,
    dtype="float32",
)


def build_model(shape):
    import keras_hub

    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=shape["vocabulary_size"],
        image_size=16,
        num_layers=shape["num_layers"],
        num_query_heads=shape["num_query_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        hidden_dim=shape["hidden_dim"],
        intermediate_dim=shape["intermediate_dim"],
        head_dim=shape["head_dim"],
        query_head_norm=True,
        key_head_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=512,
        vision_encoder=None,
        dtype=shape["dtype"],
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def peak_memory_bytes():
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return device.memory_stats()["peak_bytes_in_use"], f"{device.platform} peak"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated(), "cuda peak"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host peak RSS"


def run_variant(variant, shape, steps, warmup_steps):
    import keras
    import numpy as np

    from kerasft.recipes import LoRA, QLoRA

    keras.utils.set_random_seed(0)
    model = build_model(shape)
    recipe = LoRA(rank=8, alpha=16, targets=("query", "value"))
    if variant == "kerasft-qlora":
        recipe = QLoRA(rank=8, alpha=16, targets=("query", "value"), quantization="nf4",
                       group_size=64, double_quant=True)
    if variant.startswith("kerasft"):
        recipe.apply(model)
    else:
        model.backbone.enable_lora(rank=8, target_layer_names=["query", "value"])
    recipe.compile(model, learning_rate=1e-4)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)

    b, t = shape["batch_size"], shape["sequence_length"]
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, shape["vocabulary_size"], (b, t + 1)).astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((b, t), bool)}
    y = tokens[:, 1:]
    w = np.ones((b, t), "float32")

    def fit(n):
        repeat = lambda a: np.concatenate([a] * n)  # noqa: E731
        xs = {k: repeat(v) for k, v in x.items()}
        start = time.perf_counter()
        history = model.fit(xs, repeat(y), sample_weight=repeat(w), batch_size=b, epochs=1, verbose=0)
        return time.perf_counter() - start, history.history["loss"][-1]

    fit(warmup_steps)  # compiles the train step
    seconds, loss = fit(steps)
    peak, peak_kind = peak_memory_bytes()
    return {
        "variant": variant,
        "backend": keras.backend.backend(),
        "tokens_per_second": steps * b * t / seconds,
        "seconds_per_step": seconds / steps,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "trainable_parameters": trainable,
        "final_loss": float(loss),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="Gemma-3-1B shape, bf16, 8 x 1024")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--qlora", action="store_true", help="also time QLoRA (NF4 base)")
    parser.add_argument("--variant", choices=["kerasft", "keras-hub", "kerasft-qlora"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = FULL_SHAPE if args.full else SMALL_SHAPE
    steps = args.steps or (20 if args.full else 5)

    if args.variant:
        print(json.dumps(run_variant(args.variant, shape, steps, args.warmup_steps)))
        return

    results = {}
    for variant in ("keras-hub", "kerasft") + (("kerasft-qlora",) if args.qlora else ()):
        command = [sys.executable, __file__, "--variant", variant, "--steps", str(steps),
                   "--warmup-steps", str(args.warmup_steps)] + (["--full"] if args.full else [])
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])

    print(f"shape: {json.dumps(shape)}; {steps} timed steps; backend {results['kerasft']['backend']}")
    print(f"{'variant':<14} {'tokens/s':>12} {'s/step':>8} {'peak memory (GiB)':>18} {'trainable':>10}")
    for variant, r in results.items():
        print(f"{variant:<14} {r['tokens_per_second']:>12.1f} {r['seconds_per_step']:>8.3f} "
              f"{r['peak_memory_bytes'] / 2**30:>18.3f} {r['trainable_parameters']:>10}")
    ours, theirs = results["kerasft"], results["keras-hub"]
    print(f"ratio kerasft/keras-hub: tokens/s {ours['tokens_per_second'] / theirs['tokens_per_second']:.3f}x, "
          f"peak memory {ours['peak_memory_bytes'] / theirs['peak_memory_bytes']:.3f}x "
          f"({ours['peak_memory_kind']})")
    if "kerasft-qlora" in results:
        qlora = results["kerasft-qlora"]
        print(f"ratio QLoRA/LoRA (kerasft): tokens/s "
              f"{qlora['tokens_per_second'] / ours['tokens_per_second']:.3f}x, peak memory "
              f"{qlora['peak_memory_bytes'] / ours['peak_memory_bytes']:.3f}x")


if __name__ == "__main__":
    main()
