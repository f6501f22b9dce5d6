"""SFT LoRA step time, tokens/s and peak memory: kerasft vs keras-hub vs transformers + PEFT.

Every system trains rank-8 LoRA (alpha 16) on attention + mlp (q, k, v, o,
gate, up, down) of the same randomly initialised Gemma 3 shape, with AdamW
(lr 1e-3, no weight decay, gradient norm clipping at 1.0) and next-token
cross-entropy averaged over the positions whose sample weight is 1, on the
same token batches, each system in its own subprocess (a clean peak-memory
reading each):

- `kerasft-jax`, `kerasft-torch`: `LoRA(...).apply` + `recipe.compile` +
  `model.fit(batches)` on a `kerasft.data.SequenceBatches` (Keras on JAX / on
  PyTorch);
- `keras-hub-jax`: `backbone.enable_lora(8, [...the same 7 layers])`
  (alpha = rank, keras-hub has no alpha), `model.fit(x, y, sample_weight=w)`
  on numpy arrays, keras-hub's own data path (tf.data);
- `peft-torch`: transformers `Gemma3ForCausalLM` (same sizes, sdpa attention,
  eager) + peft `LoraConfig`, a plain PyTorch loop with `torch.optim.AdamW`.

The batches are the main job's (`recipes/configs/sft_lora.yaml`): 400 WordNet
training records sampled with seed 0, the Gemma chat template, 8 x 48 tokens,
loss on the response only, through `kerasft.data.instruction_batches`, with
the real Gemma 3 tokenizer read from the GGUF checkpoint package (only its
metadata; the weights are random). The shape is Gemma 3 270M's, read from the
same metadata (`kerasft.models.gemma3_backbone_config_from_gguf`).

Reported per system: the median seconds per optimizer step over `--steps`
steps after `--warmup-steps` (each step ends when its loss is on the host),
trained tokens/s (loss-weighted positions per second, and real tokens per
second), the peak RSS of the process (accelerator peak bytes on a GPU), and
the "fit tail": seconds from the end of the last step to the return of `fit`
(keras-hub's tf.data path was seen to idle 35-60 s there on 2 cores).
`--epoch` adds one row: one epoch over all the main job's examples, PEFT on
padded batches (as its users feed them by default) vs kerasft (JAX) on packed
rows (`instruction_batches(pack=True, sequence_length=--pack-length)`: best-fit
packing with separate loss masks, and the rows' segment ids fed to the model,
so each example attends only to itself with positions from 0, exactly as in
the padded batches). `--full`'s step rows are packed too but keep whole-row
attention (`cross_attention=True`): every system times the same batches, and
keras-hub's `enable_lora` and the PEFT loop here read no segment ids.

    python bench/sft_throughput.py                   # 270M shape, float32, CPU
    python bench/sft_throughput.py --epoch --steps 8
    python bench/sft_throughput.py --full            # Gemma-3-1B shape, bf16, 8 x 1024 (GPU)
    python bench/sft_throughput.py --quick           # tiny shape, seconds (tests)
    python bench/sft_throughput.py --qlora           # adds QLoRA (NF4 base) vs LoRA

It replaces `bench/lora_throughput.py` (kerasft vs keras-hub on random tokens).

Needs `transformers` and `peft` (the project's `bench` extra).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SYSTEMS = ("kerasft-jax", "kerasft-torch", "keras-hub-jax", "peft-torch")
# With --qlora: the same LoRA over an NF4 base (group 64, double quantization,
# every decoder kernel), printed as ratios to kerasft-jax.
QLORA_SYSTEM = "kerasft-qlora-jax"
# Gemma 3 decoder layer names in keras-hub and their transformers modules.
KERAS_TARGETS = ("query", "key", "value", "attention_output", "ffw_gating", "ffw_gating_2",
                 "ffw_linear")
PEFT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA, LEARNING_RATE, CLIPNORM = 8, 16, 1e-3, 1.0
MAIN_JOB = dict(train_examples=400, seed=0, sequence_length=48, batch_size=8)

# Gemma 3 1B (keras-hub preset `gemma3_1b`), for --full.
GEMMA3_1B = dict(num_layers=26, num_query_heads=4, num_key_value_heads=1, hidden_dim=1152,
                 intermediate_dim=6912, head_dim=256, vocabulary_size=262144,
                 query_head_dim_normalize=True, use_query_key_norm=True,
                 use_post_ffw_norm=True, use_post_attention_norm=True,
                 attention_logit_soft_cap=None, final_logit_soft_cap=None,
                 use_sliding_window_attention=True, sliding_window_size=512,
                 layer_norm_epsilon=1e-6)
# A two-block toy for --quick.
QUICK = dict(num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=32,
             intermediate_dim=64, head_dim=16, query_head_dim_normalize=True,
             use_query_key_norm=True, use_post_ffw_norm=True, use_post_attention_norm=True,
             attention_logit_soft_cap=None, final_logit_soft_cap=None,
             use_sliding_window_attention=True, sliding_window_size=512,
             layer_norm_epsilon=1e-6)


# ----------------------------------------------------------------------------
# The parent: data, subprocesses, table.


def _gguf_tokenizer_and_config():
    """Gemma 3 270M's tokenizer and backbone config, from the GGUF metadata only."""
    import keras_hub

    from kerasft.models import gemma3_gguf
    from kerasft.models.gguf_reader import read_gguf
    from kerasft.models.gguf_tokenizer import sentencepiece_proto_from_gguf

    gguf = read_gguf(gemma3_gguf._default_gguf_path())
    config = gemma3_gguf.gemma3_backbone_config_from_gguf(gguf.metadata)
    config["vocabulary_size"] = int(gguf.tensors["token_embd.weight"].shape[0])
    config.pop("image_size", None)
    config.pop("vision_encoder", None)
    tokenizer = keras_hub.models.Gemma3Tokenizer(proto=sentencepiece_proto_from_gguf(gguf.metadata))
    return tokenizer, config


def prepare_data(args, path):
    """Writes the token batches every system trains on; returns the model config."""
    from kerasft import data

    if args.quick:
        from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

        tokenizer = tiny_gemma_tokenizer()
        config = dict(QUICK, vocabulary_size=int(tokenizer.vocabulary_size()), dtype="float32")
        examples = 8 * (args.warmup_steps + args.steps)
    else:
        tokenizer, config = _gguf_tokenizer_and_config()
        if args.full:
            config = dict(GEMMA3_1B, vocabulary_size=config["vocabulary_size"])
        config["dtype"] = "bfloat16" if args.full else "float32"
        examples = MAIN_JOB["train_examples"]
    records = data.sample_records(data.load_wordnet("train"), examples, MAIN_JOB["seed"])
    batch_size = MAIN_JOB["batch_size"]
    # The full shape packs rows of 1024 tokens (WordNet examples are ~30 tokens long).
    step_batches = data.instruction_batches(
        records, tokenizer, template="gemma", batch_size=batch_size, seed=MAIN_JOB["seed"],
        sequence_length=1024 if args.full else MAIN_JOB["sequence_length"],
        truncate="response", shuffle=True, pack=args.full, cross_attention=args.full,
    )
    step_batches.set_epoch(1)  # the order the main job's first epoch trains in
    needed = args.warmup_steps + args.steps
    order = [i % len(step_batches) for i in range(needed)]
    steps = [step_batches[i] for i in order]
    arrays = {
        "token_ids": np.concatenate([b[0]["token_ids"] for b in steps]),
        "padding_mask": np.concatenate([b[0]["padding_mask"] for b in steps]),
        "y": np.concatenate([b[1] for b in steps]),
        "sample_weight": np.concatenate([b[2] for b in steps]),
    }
    if args.epoch:
        padded = data.instruction_batches(
            records, tokenizer, template="gemma", batch_size=batch_size, seed=MAIN_JOB["seed"],
            sequence_length=MAIN_JOB["sequence_length"], truncate="response", shuffle=False)
        packed = data.instruction_batches(
            records, tokenizer, template="gemma", batch_size=batch_size, seed=MAIN_JOB["seed"],
            sequence_length=args.pack_length, truncate="response", shuffle=True, pack=True)
        for name, batches in (("padded", padded), ("packed", packed)):
            ids, weights, lengths, segment_ids = batches.rows()
            arrays.update({f"{name}_ids": ids, f"{name}_weights": weights,
                           f"{name}_lengths": lengths})
            if segment_ids is not None:  # the packed rows' (kerasft reads them)
                arrays[f"{name}_segment_ids"] = segment_ids
    np.savez(path, **arrays)
    return config, batch_size


def _run_system(system, args, data_path, config, batch_size):
    backend = "torch" if system.endswith("torch") else "jax"
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), "--system", system,
               "--data", data_path, "--config", json.dumps(config),
               "--batch-size", str(batch_size), "--steps", str(args.steps),
               "--warmup-steps", str(args.warmup_steps)]
    if args.epoch and system in ("kerasft-jax", "peft-torch"):
        command.append("--epoch")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{system} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(results, config, args):
    lines = []
    shape = {k: config[k] for k in ("num_layers", "hidden_dim", "intermediate_dim",
                                    "vocabulary_size", "dtype")}
    first = next(iter(results.values()))
    lines.append(f"shape {json.dumps(shape)}; batches of {first['batch_shape']}, "
                 f"{first['weighted_fraction']:.1%} of positions loss-weighted, "
                 f"{first['real_fraction']:.1%} real tokens; median of {args.steps} steps "
                 f"after {args.warmup_steps} warm-up")
    header = (f"| {'system':<14} | s/step | weighted tok/s | real tok/s | peak mem GiB | "
              f"fit tail s | x PEFT step | x keras-hub step | final loss |")
    lines += [header, "|" + "---|" * 9]
    peft = results.get("peft-torch", {}).get("seconds_per_step")
    hub = results.get("keras-hub-jax", {}).get("seconds_per_step")
    for system, r in results.items():
        step = r["seconds_per_step"]
        tail = "-" if r["fit_tail_seconds"] is None else f"{r['fit_tail_seconds']:.2f}"
        lines.append(
            f"| {system:<14} | {step:.3f} | {r['weighted_tokens_per_second']:.0f} | "
            f"{r['real_tokens_per_second']:.0f} | {r['peak_memory_bytes'] / 2**30:.2f} | {tail} | "
            f"{step / peft if peft else float('nan'):.2f} | "
            f"{step / hub if hub else float('nan'):.2f} | {r['final_loss']:.3f} |")
    if QLORA_SYSTEM in results and "kerasft-jax" in results:
        qlora, lora = results[QLORA_SYSTEM], results["kerasft-jax"]
        lines.append(f"QLoRA/LoRA (kerasft, JAX): step time "
                     f"{qlora['seconds_per_step'] / lora['seconds_per_step']:.2f}x, peak memory "
                     f"{qlora['peak_memory_bytes'] / lora['peak_memory_bytes']:.2f}x")
    epochs = {s: r["epoch"] for s, r in results.items() if r.get("epoch")}
    if epochs:
        lines.append("epoch over the main job's examples (kerasft packed, PEFT padded):")
        base = epochs.get("peft-torch", {}).get("seconds")
        for system, e in epochs.items():
            ratio = f"{e['seconds'] / base:.2f}x PEFT" if base else ""
            lines.append(f"| epoch {system:<14} | {e['rows']} rows x {e['sequence_length']} | "
                         f"{e['steps']} steps | {e['seconds']:.1f} s | {ratio} |")
    lines.append(f"peak memory: {first['peak_memory_kind']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# One system, in its own process.


def _peak_memory():
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated(), "cuda peak bytes"
    except ImportError:
        pass
    if os.environ.get("KERAS_BACKEND") == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return device.memory_stats()["peak_bytes_in_use"], f"{device.platform} peak bytes"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host peak RSS"


def _load(path):
    arrays = dict(np.load(path))
    return arrays


def _keras_lm(config):
    import keras_hub

    backbone = keras_hub.models.Gemma3Backbone(image_size=16, vision_encoder=None, **config)
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def _keras_timing_callback():
    import keras

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends, self.start, self.loss = [], None, None

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.loss = float(logs["loss"])  # waits for the step (JAX dispatches asynchronously)
            self.ends.append(time.perf_counter())

    return StepTimes()


def _keras_system(system, arrays, config, batch_size, warmup, steps, epoch):
    import keras

    from kerasft.data import SequenceBatches
    from kerasft.recipes import LoRA, QLoRA

    keras.utils.set_random_seed(0)
    model = _keras_lm(config)
    x = {"token_ids": arrays["token_ids"], "padding_mask": arrays["padding_mask"]}
    y, w = arrays["y"], arrays["sample_weight"]
    timing = _keras_timing_callback()
    if system.startswith("kerasft"):
        recipe = LoRA(rank=RANK, alpha=ALPHA, targets=("attention", "mlp"))
        if system == QLORA_SYSTEM:
            # Group 64 as QLoRA's paper; the --quick toy is narrower than that.
            group_size = 64 if config["hidden_dim"] % 64 == 0 else 16
            recipe = QLoRA(rank=RANK, alpha=ALPHA, targets=("attention", "mlp"),
                           quantization="nf4", group_size=group_size, double_quant=True)
        recipe.apply(model)
        recipe.compile(model, learning_rate=LEARNING_RATE, weight_decay=0.0, clipnorm=CLIPNORM)
        ids = np.concatenate([x["token_ids"], y[:, -1:]], axis=1)
        weights = np.concatenate([np.zeros_like(w[:, :1]), w], axis=1)
        batches = SequenceBatches(ids, weights, x["padding_mask"].sum(axis=1),
                                  batch_size=batch_size, shuffle=False)
        start = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0, callbacks=[timing])
    else:
        model.backbone.enable_lora(rank=RANK, target_layer_names=list(KERAS_TARGETS))
        # The same loss and metric as kerasft's compile, in plain Keras.
        model.compile(
            optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=0.0, clipnorm=CLIPNORM),
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"),
            weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        start = time.perf_counter()
        model.fit(x, y, sample_weight=w, batch_size=batch_size, epochs=1, verbose=0,
                  callbacks=[timing])
    end = time.perf_counter()
    times = np.diff([timing.start] + timing.ends)
    result = dict(step_seconds=times[warmup:].tolist(), fit_tail_seconds=end - timing.ends[-1],
                  final_loss=timing.loss,
                  trainable_parameters=int(sum(np.prod(v.shape) for v in model.trainable_weights)))
    if epoch:
        batches = SequenceBatches(arrays["packed_ids"], arrays["packed_weights"],
                                  arrays["packed_lengths"], batch_size=batch_size, seed=0,
                                  segment_ids=arrays["packed_segment_ids"])
        # Compile the packed shapes first (full batch and the last, smaller
        # one), so the epoch is training time only.
        warm = batches.select(range(batch_size + batches.num_examples % batch_size))
        model.fit(warm, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        result["epoch"] = dict(seconds=time.perf_counter() - start, rows=batches.num_examples,
                               sequence_length=batches.sequence_length, steps=len(batches))
    return result


def _peft_model(config):
    import peft
    import torch
    import transformers

    dtype = torch.bfloat16 if config["dtype"] == "bfloat16" else torch.float32
    hf_config = transformers.Gemma3TextConfig(
        vocab_size=config["vocabulary_size"], hidden_size=config["hidden_dim"],
        intermediate_size=config["intermediate_dim"], num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_query_heads"],
        num_key_value_heads=config["num_key_value_heads"], head_dim=config["head_dim"],
        query_pre_attn_scalar=config["head_dim"], sliding_window=config["sliding_window_size"],
        final_logit_softcapping=config["final_logit_soft_cap"],
        attn_logit_softcapping=config["attention_logit_soft_cap"],
        rms_norm_eps=config["layer_norm_epsilon"], tie_word_embeddings=True,
        attn_implementation="sdpa", dtype=dtype,
    )
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(hf_config).to(dtype)
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(PEFT_TARGETS)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), device


def _peft_system(arrays, config, batch_size, warmup, steps, epoch):
    import torch

    model, device = _peft_model(config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE, weight_decay=0.0)

    def step(ids, mask, y, w):
        ids = torch.as_tensor(ids, dtype=torch.long, device=device)
        mask = torch.as_tensor(mask, dtype=torch.long, device=device)
        # transformers' causal-LM loss: labels -100 where not trained, mean
        # over the trained positions, logits upcast to float32.
        labels = torch.as_tensor(np.where(w > 0, y, -100), dtype=torch.long, device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, CLIPNORM)
        optimizer.step()
        value = float(loss)  # waits for the step on an accelerator
        return value

    times, loss = [], None
    n = len(arrays["y"]) // batch_size
    for i in range(n):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        start = time.perf_counter()
        loss = step(arrays["token_ids"][rows], arrays["padding_mask"][rows], arrays["y"][rows],
                    arrays["sample_weight"][rows])
        times.append(time.perf_counter() - start)
    result = dict(step_seconds=times[warmup:], fit_tail_seconds=None, final_loss=loss,
                  trainable_parameters=int(sum(p.numel() for p in trainable)))
    if epoch:
        from kerasft.data import SequenceBatches

        batches = SequenceBatches(arrays["padded_ids"], arrays["padded_weights"],
                                  arrays["padded_lengths"], batch_size=batch_size, seed=0)
        batches.set_epoch(1)
        start = time.perf_counter()
        for i in range(len(batches)):
            x, y, w = batches[i]
            step(x["token_ids"], x["padding_mask"], y, w)
        result["epoch"] = dict(seconds=time.perf_counter() - start, rows=batches.num_examples,
                               sequence_length=batches.sequence_length, steps=len(batches))
    return result


def run_system(args):
    arrays = _load(args.data)
    config = json.loads(args.config)
    if args.system == "peft-torch":
        result = _peft_system(arrays, config, args.batch_size, args.warmup_steps, args.steps,
                              args.epoch)
    else:
        result = _keras_system(args.system, arrays, config, args.batch_size, args.warmup_steps,
                               args.steps, args.epoch)
    measured = slice(args.warmup_steps * args.batch_size, None)
    weights, mask = arrays["sample_weight"][measured], arrays["padding_mask"][measured]
    steps = len(result["step_seconds"])
    total = float(sum(result["step_seconds"]))
    peak, kind = _peak_memory()
    result.update(
        system=args.system, seconds_per_step=statistics.median(result["step_seconds"]),
        weighted_tokens_per_second=float(weights.sum()) / total,
        real_tokens_per_second=float(mask.sum()) / total, steps=steps,
        peak_memory_bytes=peak, peak_memory_kind=kind,
        batch_shape=list(arrays["y"][: args.batch_size].shape),
        weighted_fraction=float(arrays["sample_weight"].mean()),
        real_fraction=float(arrays["padding_mask"].mean()),
    )
    print(json.dumps(result))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="Gemma-3-1B shape, bf16, 8 x 1024")
    parser.add_argument("--quick", action="store_true", help="a tiny shape, for tests")
    parser.add_argument("--epoch", action="store_true",
                        help="also time one epoch: kerasft (JAX) packed vs PEFT padded")
    parser.add_argument("--pack-length", type=int, default=192,
                        help="row length of kerasft's packed epoch")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--qlora", action="store_true", help=f"also run {QLORA_SYSTEM}")
    parser.add_argument("--system", choices=SYSTEMS + (QLORA_SYSTEM,), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.system:
        return run_system(args)
    if args.steps < 1 or args.warmup_steps < 1:
        parser.error(f"--steps and --warmup-steps must be >= 1. Received: steps={args.steps}, "
                     f"warmup_steps={args.warmup_steps}")
    systems = [s for s in args.systems.split(",") if s] + ([QLORA_SYSTEM] if args.qlora else [])
    unknown = sorted(set(systems) - set(SYSTEMS) - {QLORA_SYSTEM})
    if unknown:
        parser.error(f"--systems must name systems of {list(SYSTEMS)}. Received: {unknown}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "batches.npz")
        config, batch_size = prepare_data(args, path)
        results = {}
        for system in systems:
            print(f"running {system} ...", file=sys.stderr, flush=True)
            results[system] = _run_system(system, args, path, config, batch_size)
            # Each result as it comes, so a run cut short still reports.
            print(json.dumps({system: results[system]}), file=sys.stderr, flush=True)
    print(_table(results, config, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": config, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
