"""Continued pre-training of the real Gemma 3 270M on Shakespeare, with LoRA.

Loads the model, measures perplexity on held-out plays (validation: Macbeth,
test: The Comedy of Errors), trains on packed text from the other plays with
`model.fit()`, measures again and saves the adapter.

    python recipes/continued_pretraining.py --config recipes/configs/continued_pretraining.yaml
    python recipes/continued_pretraining.py --set training.max_train_rows=16   # quick look
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import json
import pathlib
import sys
import time

import keras

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import sft_lora  # noqa: E402  (reuses its config parsing)

import kerasft  # noqa: E402
from kerasft import configs, data, evaluate  # noqa: E402
from kerasft.models import gemma3_from_gguf  # noqa: E402
from kerasft.recipes import recipe_from_config  # noqa: E402


# Every key the script reads; `?` marks an optional one (see kerasft.configs).
CONFIG_SCHEMA = {
    "seed": None,
    "output_dir": None,
    "model": ["dtype?"],
    "data": ["task?", "sequence_length", "eval_characters"],
    "recipe": configs.RECIPE,
    "training": ["batch_size", "epochs", "max_train_rows", "learning_rate", "weight_decay?",
                 "gradient_accumulation_steps?"],
}


def held_out_perplexity(model, config):
    cfg = config["data"]
    results = {}
    for split in ("validation", "test"):
        text = data.load_shakespeare(split)[0][: cfg["eval_characters"]]
        batches = data.packed_text_batches(
            [text], model.preprocessor.tokenizer, sequence_length=cfg["sequence_length"],
            batch_size=config["training"]["batch_size"], shuffle=False,
        )
        results[split] = evaluate.perplexity(model, batches, progress=False)["perplexity"]
    return results


def main():
    config = sft_lora.load_config(
        sft_lora.parse_args("recipes/configs/continued_pretraining.yaml", __doc__), CONFIG_SCHEMA
    )
    keras.utils.set_random_seed(config["seed"])
    model = gemma3_from_gguf(dtype=config["model"].get("dtype"))
    before = held_out_perplexity(model, config)

    cfg, training = config["data"], config["training"]
    recipe = recipe_from_config(config["recipe"])
    recipe.apply(model)
    batches = data.packed_text_batches(
        data.load_shakespeare("train"), model.preprocessor.tokenizer,
        sequence_length=cfg["sequence_length"], batch_size=training["batch_size"],
        seed=config["seed"],
    )
    # The packed rows follow the plays in order: train on a seeded sample of them.
    keep = data.sample_records(range(batches.num_examples), training["max_train_rows"],
                               config["seed"])
    batches = batches.select(keep)
    rows = batches.num_examples
    accumulation = training.get("gradient_accumulation_steps", 1)
    fit_batches, steps_per_epoch = configs.accumulated_batches(batches, accumulation)
    steps = steps_per_epoch * training["epochs"]  # optimizer steps
    recipe.compile(model, learning_rate=training["learning_rate"], total_steps=steps,
                   weight_decay=training.get("weight_decay", 0.01),
                   gradient_accumulation_steps=accumulation)
    start = time.perf_counter()
    with kerasft.pretokenized(model):  # shuffled with `seed`, a new order every epoch
        model.fit(fit_batches, epochs=training["epochs"], verbose=1)
    print(f"Trained {steps} steps on {rows} rows of {cfg['sequence_length']} tokens "
          f"in {time.perf_counter() - start:.0f} s")

    after = held_out_perplexity(model, config)
    output_dir = pathlib.Path(config["output_dir"])
    kerasft.save_adapter(model, output_dir / "adapter")
    (output_dir / "metrics.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
    print(f"\n{'held-out play perplexity':<32}{'before':>10}{'after':>10}")
    for split, title in (("validation", "Macbeth"), ("test", "The Comedy of Errors")):
        print(f"{title:<32}{before[split]:>10.2f}{after[split]:>10.2f}")


if __name__ == "__main__":
    main()
