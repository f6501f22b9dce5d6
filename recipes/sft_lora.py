"""Instruction-tune the real Gemma 3 270M with LoRA on WordNet definitions.

The main job of kerasft, run by `bash scripts/demo.sh`. It reads top to bottom:
load the model, evaluate it on held-out words, train with `model.fit()`,
evaluate again, save the adapter, print a before/after table.

    python recipes/sft_lora.py --config recipes/configs/sft_lora.yaml
    python recipes/sft_lora.py --config recipes/configs/sft_lora_gpu.yaml   # larger budget

Every setting lives in the config file; `--set section.key=value` overrides one.
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import json
import pathlib
import time

import keras

import kerasft
from kerasft import configs, data, evaluate
from kerasft.models import gemma3_from_gguf
from kerasft.recipes.base import recipe_from_config

# Every key the script reads; `?` marks an optional one (see kerasft.configs).
CONFIG_SCHEMA = {
    "seed": None,
    "output_dir": None,
    "show_examples": None,
    "model": ["dtype?"],
    "data": ["template", "sequence_length", "train_examples", "eval_examples",
             "generation_max_length", "generation_batch_size"],
    "recipe": configs.RECIPE,
    "training": ["batch_size", "epochs", "learning_rate", "weight_decay",
                 "gradient_accumulation_steps?"],
}


def parse_args(default_config="recipes/configs/sft_lora.yaml", description=__doc__):
    """`--config PATH` and repeated `--set section.key=value`; the recipe
    scripts share it, each with its own default config."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--config", default=default_config)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (YAML syntax), e.g. --set training.epochs=2")
    return parser.parse_args()


def load_config(args, schema=CONFIG_SCHEMA):
    """The config file with the `--set` overrides, every section's keys checked against `schema`."""
    return configs.load_script_config(args.config, args.set, schema)


def setup(config):
    keras.utils.set_random_seed(config["seed"])
    start = time.perf_counter()
    model = gemma3_from_gguf(dtype=config["model"].get("dtype"))
    print(f"Loaded Gemma 3 270M ({model.backbone.count_params():,} parameters, "
          f"{model.backbone.dtype_policy.name}) in {time.perf_counter() - start:.0f} s")
    cfg = config["data"]
    # The shipped splits are alphabetical: sample across the whole alphabet.
    train = data.sample_records(data.load_wordnet("train"), cfg["train_examples"], config["seed"])
    held_out = data.sample_records(data.load_wordnet("test"), cfg["eval_examples"], config["seed"])
    return model, train, held_out


def evaluate_model(model, held_out, config):
    """Response perplexity and greedy-generation metrics on held-out words."""
    cfg = config["data"]
    tokenizer = model.preprocessor.tokenizer
    batches = data.instruction_batches(
        held_out, tokenizer, template=cfg["template"], sequence_length=cfg["sequence_length"],
        batch_size=config["training"]["batch_size"], shuffle=False, truncate="response",
    )
    scores = evaluate.perplexity(model, batches, progress=False)
    template = data.get_template(cfg["template"])
    prompts = [template.render_prompt(r["prompt"]) for r in held_out]
    generations = evaluate.generate_and_score(
        model, prompts, [r["response"] for r in held_out],
        max_length=cfg["generation_max_length"], batch_size=cfg["generation_batch_size"],
    )
    return {
        "perplexity": scores["perplexity"],
        **{k: generations[k] for k in ("exact_match", "token_f1", "bleu", "rouge_l")},
        "outputs": generations["outputs"],
    }


def train(model, train_records, config, **apply_kwargs):
    """Applies the config's recipe (with `apply_kwargs`) and fits it on `train_records`."""
    cfg, training = config["data"], config["training"]
    recipe = recipe_from_config(config["recipe"])
    base_parameters = model.backbone.count_params()
    recipe.apply(model, **apply_kwargs)
    trainable = int(sum(keras.ops.size(v) for v in model.trainable_weights))
    print(f"{recipe}: {trainable:,} trainable parameters "
          f"({100 * trainable / base_parameters:.2f}% of the base model)")
    batches = data.instruction_batches(
        train_records, model.preprocessor.tokenizer, template=cfg["template"],
        sequence_length=cfg["sequence_length"], batch_size=training["batch_size"],
        seed=config["seed"], truncate="response",
    )  # shuffled with `seed`, in a new order every epoch
    accumulation = training.get("gradient_accumulation_steps", 1)
    fit_batches, steps_per_epoch = configs.accumulated_batches(batches, accumulation)
    steps = steps_per_epoch * training["epochs"]  # optimizer steps
    recipe.compile(model, learning_rate=training["learning_rate"], total_steps=steps,
                   weight_decay=training["weight_decay"], gradient_accumulation_steps=accumulation)
    output_dir = pathlib.Path(config["output_dir"])
    start = time.perf_counter()
    with kerasft.pretokenized(model):  # batches are token ids already
        history = model.fit(
            fit_batches, epochs=training["epochs"], verbose=1,
            callbacks=[kerasft.TrainingCheckpoint(output_dir / "checkpoint", resume=False)],
        )
    seconds = time.perf_counter() - start
    tokens = int(batches.as_arrays()[0]["padding_mask"].sum()) * training["epochs"]
    print(f"Trained {steps} steps in {seconds:.0f} s ({tokens / seconds:.0f} tokens/s); "
          f"mean training loss per epoch: {[round(v, 3) for v in history.history['loss']]}")
    return recipe


def report(before, after, held_out, config):
    rows = [("perplexity (response tokens)", "perplexity", "{:.2f}"),
            ("exact match", "exact_match", "{:.3f}"), ("token F1", "token_f1", "{:.3f}"),
            ("BLEU", "bleu", "{:.3f}"), ("ROUGE-L", "rouge_l", "{:.3f}")]
    print(f"\nHeld-out WordNet words ({len(held_out)}, no word seen in training)")
    print(f"{'metric':<30}{'before':>10}{'after':>10}")
    for label, key, fmt in rows:
        print(f"{label:<30}{fmt.format(before[key]):>10}{fmt.format(after[key]):>10}")
    # The defaults `evaluate_model`'s `generate_and_score` call runs with.
    print(f"Metrics: {evaluate.describe_metrics()}")
    print("\nGenerations (greedy):")
    for record, old, new in list(zip(held_out, before["outputs"], after["outputs"]))[: config["show_examples"]]:
        print(f"- {record['prompt']}\n    reference: {record['response']}\n"
              f"    before:    {old.strip()[:120]!r}\n    after:     {new.strip()[:120]!r}")


def save_results(model, before, after, config):
    """Saves the adapter and the before/after metrics under `output_dir`, which it returns."""
    output_dir = pathlib.Path(config["output_dir"])
    kerasft.save_adapter(model, output_dir / "adapter")
    summary = {k: {"before": before[k], "after": after[k]}
               for k in ("perplexity", "exact_match", "token_f1", "bleu", "rouge_l")}
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return output_dir


def main():
    config = load_config(parse_args())
    model, train_records, held_out = setup(config)
    before = evaluate_model(model, held_out, config)
    train(model, train_records, config)
    after = evaluate_model(model, held_out, config)
    output_dir = save_results(model, before, after, config)
    report(before, after, held_out, config)
    print(f"\nAdapter saved to {output_dir / 'adapter'}; metrics in {output_dir / 'metrics.json'}")


if __name__ == "__main__":
    main()
