"""Preference / RL figures on the real Gemma 3 270M (CPU, float32), one method per run.

    flock /tmp/kerasft-real.lock timeout 900 python bench/preference_real.py dpo
    flock /tmp/kerasft-real.lock timeout 900 python bench/preference_real.py reward
    flock /tmp/kerasft-real.lock timeout 900 python bench/preference_real.py grpo
    python bench/preference_real.py memory     # JAX only: compiled step memory, DPO vs SFT

Held-out data are the test split of the shipped WordNet preference pairs /
part-of-speech prompts (no headword seen in training). Prints one JSON line
of figures at the end.
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kerasft import data  # noqa: E402
from kerasft.data.preference import (  # noqa: E402
    load_wordnet_pos,
    load_wordnet_preference,
    part_of_speech_reward,
    preference_batches,
)
from kerasft.evaluate.preference import preference_accuracy  # noqa: E402
from kerasft.finetune.models import load_model  # noqa: E402
from kerasft.recipes import LoRA  # noqa: E402


def pairs(model, split, count, batch_size, seed, shuffle, length):
    records = data.sample_records(load_wordnet_preference(split), count, seed)
    return preference_batches(records, model.preprocessor.tokenizer, template="gemma",
                              sequence_length=length, batch_size=batch_size, shuffle=shuffle,
                              seed=seed)


def run_dpo(args, model):
    from kerasft.recipes.preference import DPO

    held_out = pairs(model, "test", args.eval_pairs, 8, 0, False, args.length)
    figures = {"base_likelihood_accuracy": preference_accuracy(model, held_out)}
    recipe = DPO(beta=args.beta, base=LoRA(rank=8, alpha=16, targets=["attention", "mlp"]))
    policy = recipe.apply(model)
    if args.extra_evals:  # exactly chance by construction (margin 0): tests/recipes check it
        figures["dpo_at_init"] = preference_accuracy(policy, held_out)
    train = pairs(model, "train", args.train_pairs, args.batch_size, 0, True, args.length)
    recipe.compile(policy, learning_rate=args.learning_rate, total_steps=len(train),
                   weight_decay=0.0)
    start = time.perf_counter()
    history = policy.fit(train, epochs=1, verbose=2).history
    figures["train_seconds"] = time.perf_counter() - start
    figures["train_history"] = {k: [round(float(v), 4) for v in vals] for k, vals in history.items()}
    figures["dpo_after"] = preference_accuracy(policy, held_out)
    if args.extra_evals:
        figures["tuned_likelihood_accuracy"] = preference_accuracy(policy.causal_lm, held_out)
    return figures


def run_reward(args, model):
    from kerasft.recipes.reward_model import RewardModel

    held_out = pairs(model, "test", args.eval_pairs, 8, 0, False, args.length)
    recipe = RewardModel(base=LoRA(rank=8, alpha=16, targets=["attention", "mlp"]))
    scorer = recipe.apply(model)
    figures = {"at_init": preference_accuracy(scorer, held_out)}
    train = pairs(model, "train", args.train_pairs, args.batch_size, 0, True, args.length)
    recipe.compile(scorer, learning_rate=args.learning_rate, total_steps=len(train),
                   weight_decay=0.0)
    start = time.perf_counter()
    history = scorer.fit(train, epochs=1, verbose=2).history
    figures["train_seconds"] = time.perf_counter() - start
    figures["train_history"] = {k: [round(float(v), 4) for v in vals] for k, vals in history.items()}
    figures["after"] = preference_accuracy(scorer, held_out)
    return figures


def greedy_answers(recipe, policy, records):
    """Mean reward of greedy answers (as `GRPO.mean_reward`) and how often each first word comes."""
    import keras_hub

    rollout = recipe.sample(policy, records, "plain", sampler=keras_hub.samplers.GreedySampler(),
                            group_size=1)
    answers = [(str(c).strip().split() or [""])[0].lower() for c in rollout["completions"]]
    counts = {a: answers.count(a) for a in sorted(set(answers))}
    return float(np.mean(recipe.rewards(rollout))), counts


def run_grpo(args, model):
    from kerasft.recipes.grpo import GRPO

    recipe = GRPO([part_of_speech_reward], group_size=args.group_size, beta=args.grpo_beta,
                  base=LoRA(rank=8, alpha=16, targets=["attention", "mlp"]), max_new_tokens=4,
                  temperature=args.temperature)
    policy = recipe.apply(model)
    recipe.compile(policy, learning_rate=args.learning_rate, weight_decay=0.0)
    held_out = data.sample_records(load_wordnet_pos("test"), args.eval_pairs, 0)
    # The prompts are few-shot completions for a base model (template "plain").
    figures = dict(zip(("held_out_mean_reward_before", "held_out_answers_before"),
                       greedy_answers(recipe, policy, held_out)))
    train = data.sample_records(load_wordnet_pos("train"), None, 0)
    start = time.perf_counter()
    history = recipe.train(policy, train, steps=args.steps, prompts_per_step=args.batch_size,
                           template="plain")
    figures["train_seconds"] = time.perf_counter() - start
    figures["train_mean_reward"] = [round(v, 3) for v in history["mean_reward"]]
    for phase in ("sample_seconds", "update_seconds"):
        figures[f"median_{phase}"] = float(np.median(history[phase]))
    figures["held_out_mean_reward_after"], figures["held_out_answers_after"] = greedy_answers(
        recipe, policy, held_out)
    figures["always_noun_baseline"] = float(np.mean([r["pos"] == "noun" for r in held_out]))
    return figures


def run_memory(args, model):
    """Compiled (XLA) memory of one gradient step: DPO on B pairs vs SFT on the same 2B rows."""
    import jax

    from kerasft.recipes.preference import DPO

    if model.preprocessor is not None:
        x, y, weights = pairs(model, "train", args.batch_size, args.batch_size, 0, False,
                              args.length)[0]
    else:  # random weights: token values do not change the step's memory
        rng = np.random.default_rng(0)
        rows = 2 * args.batch_size
        ids = rng.integers(1, 1000, (rows, args.length + 1)).astype("int32")
        x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((rows, args.length), bool)}
        y = ids[:, 1:]
        weights = np.zeros((rows, args.length), "float32")
        weights[:, args.length // 3:] = 1.0
    recipe = DPO(base=LoRA(rank=8, alpha=16, targets=["attention", "mlp"]))
    policy = recipe.apply(model)
    figures = {"rows": int(y.shape[0]), "sequence_length": int(y.shape[1])}
    for name, compiled_model in (("sft", policy.causal_lm), ("dpo", policy)):
        if name == "sft":
            LoRA().compile(compiled_model)
        else:
            recipe.compile(compiled_model)
        trainable = [v.value for v in compiled_model.trainable_variables]
        non_trainable = [v.value for v in compiled_model.non_trainable_variables]
        metrics = [v.value for v in compiled_model.metrics_variables]

        def loss(tv, ntv, mv, x, y, w, m=compiled_model):
            # training=False only skips loss scaling (no dropout in these models).
            return m.compute_loss_and_updates(tv, ntv, mv, x, y, w, training=False)

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        analysis = step.lower(trainable, non_trainable, metrics, x, y, weights).compile()
        memory = analysis.memory_analysis()
        figures[name] = {"temp_bytes": int(memory.temp_size_in_bytes),
                         "argument_bytes": int(memory.argument_size_in_bytes),
                         "output_bytes": int(memory.output_size_in_bytes)}
        figures[name]["peak_bytes"] = sum(figures[name].values())
    figures["dpo_over_sft_peak"] = figures["dpo"]["peak_bytes"] / figures["sft"]["peak_bytes"]
    figures["dpo_over_sft_temp"] = figures["dpo"]["temp_bytes"] / figures["sft"]["temp_bytes"]
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["dpo", "reward", "grpo", "memory"])
    parser.add_argument("--train-pairs", type=int, default=256)
    parser.add_argument("--eval-pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grpo-beta", type=float, default=0.04, help="grpo: the KL weight")
    parser.add_argument("--temperature", type=float, default=1.0, help="grpo: sampling temperature")
    parser.add_argument("--extra-evals", action="store_true",
                        help="dpo: also score the policy at init and the tuned LM's likelihood")
    parser.add_argument("--random-weights", action="store_true",
                        help="memory only: the 270M shapes with random weights (no checkpoint)")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    if args.random_weights:
        # Gemma 3 270M's shapes (its config.json) with random weights: for the compiled-memory
        # comparison only, which depends on shapes, not values.
        import keras_hub

        backbone = keras_hub.models.Gemma3Backbone(
            vocabulary_size=262144, image_size=896, num_layers=18, num_query_heads=4,
            num_key_value_heads=1, hidden_dim=640, intermediate_dim=2048, head_dim=256,
            query_head_dim_normalize=True, use_query_key_norm=True, use_post_ffw_norm=True,
            use_post_attention_norm=True, attention_logit_soft_cap=None,
            final_logit_soft_cap=None, use_sliding_window_attention=True,
            sliding_window_size=512, local_rope_scaling_factor=1.0, vision_encoder=None)
        model = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
    else:
        model = load_model("gemma3-270m", sequence_length=args.length)
    print(f"loaded in {time.perf_counter() - start:.0f} s", flush=True)
    figures = {"run_dpo": run_dpo, "run_reward": run_reward, "run_grpo": run_grpo,
               "run_memory": run_memory}[f"run_{args.method}"](args, model)
    figures.update(method=args.method, args=vars(args), backend=keras.backend.backend(),
                   total_seconds=time.perf_counter() - start)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
