"""Step time of LoRA fine-tuning on a device mesh vs one device (kerasft.distribution).

On a CPU the mesh is simulated: `--xla_force_host_platform_device_count=8`
splits the host into 8 XLA devices that share its cores, so the figures are a
correctness and overhead check (collectives, resharding), never a speed-up;
on a 2-core machine 8 devices only add overhead. On a machine with several
accelerators the same script times the real mesh (the flag only affects the
CPU platform).

    KERAS_BACKEND=jax python bench/distribution_throughput.py
    KERAS_BACKEND=jax python bench/distribution_throughput.py --meshes 1x8 2x4 --lora replicated

Prints, for one device and for every `DATAxMODEL` mesh, the median step time
(ms) of `--steps` LoRA training steps after one compiling step, the fraction of
the variable bytes one device holds, and the loss after the steps (equal across
meshes up to float32 summation order).
"""

import argparse
import os

# Must be set before JAX is imported (it reads the flag once).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("KERAS_BACKEND", "jax")

import contextlib  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from kerasft import distribution as kd  # noqa: E402
from kerasft.recipes import LoRA  # noqa: E402


def build_model(args):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.Gemma3Backbone(
        vocabulary_size=args.vocabulary, image_size=16, num_layers=args.layers,
        num_query_heads=8, num_key_value_heads=8, hidden_dim=args.hidden,
        intermediate_dim=4 * args.hidden, head_dim=args.hidden // 8,
        use_query_key_norm=True, vision_encoder=None,
    )
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def batch(args):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, args.vocabulary, (args.batch_size, args.sequence_length + 1), "int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1], bool)}
    return x, ids[:, 1:]


def time_steps(args, mesh):
    """(median step seconds, fraction of variable bytes per device, final loss)."""
    dist = None
    if mesh is not None:
        data, model = (int(n) for n in mesh.split("x"))
        dist = kd.distribution_from_config({"data": data, "model": model}, lora=args.lora)
    with dist.scope() if dist else contextlib.nullcontext():
        model = build_model(args)
        recipe = LoRA(rank=8, targets=["attention", "mlp"])
        model = recipe.apply(model) or model
        recipe.compile(model, learning_rate=1e-3)
        x, y = batch(args)
        loss = model.train_on_batch(x, y)  # compiles
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            loss = model.train_on_batch(x, y)  # returns a Python float: the step has finished
            times.append(time.perf_counter() - start)
        held = kd.sharded_fraction(model)
    return statistics.median(times), held, float(np.ravel(loss)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meshes", nargs="+", default=["8x1", "1x8", "2x4"],
                        help="DATAxMODEL meshes; DATA x MODEL must be the device count")
    parser.add_argument("--lora", default="sharded", choices=kd.LORA_LAYOUTS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocabulary", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=128)
    args = parser.parse_args()
    devices = keras.distribution.list_devices()
    print(f"{len(devices)} devices ({devices[0]}...); LoRA layout: {args.lora}; "
          f"{args.layers} blocks, hidden {args.hidden}, batch {args.batch_size} x "
          f"{args.sequence_length} tokens")
    single, _, single_loss = time_steps(args, None)
    print(f"{'mesh':<10}{'step ms':>10}{'vs 1 device':>14}{'bytes/device':>14}{'loss':>12}")
    print(f"{'1 device':<10}{1e3 * single:>10.1f}{1.0:>14.2f}{1.0:>14.3f}{single_loss:>12.6f}")
    for mesh in args.meshes:
        seconds, held, loss = time_steps(args, mesh)
        print(f"{mesh:<10}{1e3 * seconds:>10.1f}{seconds / single:>14.2f}{held:>14.3f}"
              f"{loss:>12.6f}")


if __name__ == "__main__":
    main()
