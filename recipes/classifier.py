"""Fine-tune Gemma 3 270M as a 3-class tweet sentiment classifier.

Reads top to bottom: load the model and the tweets, apply the `Classifier`
recipe from the config (a new head on the backbone, optionally on top of
LoRA), train with `model.fit()`, score accuracy and macro-F1 on held-out
tweets, save the adapter (head + LoRA weights) and check that reloading it
onto a fresh base gives the same probabilities.

    python recipes/classifier.py --config recipes/configs/classifier.yaml
    python recipes/classifier.py --set recipe.base=null      # head only

Every setting lives in the config file; `--set section.key=value` overrides one.
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import json
import pathlib
import sys
import time

import keras
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from sft_lora import load_config, parse_args  # noqa: E402  (the shared config parsing)

import kerasft  # noqa: E402
from kerasft import configs, data, evaluate  # noqa: E402
from kerasft.models import gemma3_from_gguf  # noqa: E402
from kerasft.recipes.base import recipe_from_config  # noqa: E402


# Every key the script reads; `?` marks an optional one (see kerasft.configs).
# No gradient_accumulation_steps: the classifier fits arrays with Keras's own
# (per-example) loss, so the key is refused rather than ignored.
CONFIG_SCHEMA = {
    "seed": None,
    "output_dir": None,
    "model": ["dtype?"],
    "data": ["sequence_length", "train_examples", "eval_split", "eval_examples"],
    "recipe": configs.RECIPE,
    "training": ["batch_size", "epochs", "learning_rate", "weight_decay"],
}


def subset(records, size, seed):
    """A seeded subset of `size` records with the split's class balance."""
    if size >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    labels = np.array([r["label"] for r in records])
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.extend(rng.choice(members, round(size * len(members) / len(records)), replace=False))
    return [records[i] for i in sorted(chosen)]


def setup(config):
    keras.utils.set_random_seed(config["seed"])
    start = time.perf_counter()
    causal_lm = gemma3_from_gguf(dtype=config["model"].get("dtype"))
    print(f"Loaded Gemma 3 270M in {time.perf_counter() - start:.0f} s")
    cfg = config["data"]
    tokenizer = causal_lm.preprocessor.tokenizer
    train = subset(data.load_tweets_sentiment("train"), cfg["train_examples"], config["seed"])
    held_out = subset(data.load_tweets_sentiment(cfg["eval_split"]), cfg["eval_examples"], config["seed"])
    arrays = [data.text_classification_arrays(r, tokenizer, cfg["sequence_length"]) for r in (train, held_out)]
    return causal_lm, arrays


def train(causal_lm, x, y, config):
    training = config["training"]
    recipe = recipe_from_config(config["recipe"])
    model = recipe.apply(causal_lm)
    trainable = int(sum(keras.ops.size(v) for v in model.trainable_weights))
    print(f"{recipe}: {trainable:,} trainable parameters")
    steps = -(-len(y) // training["batch_size"]) * training["epochs"]
    recipe.compile(model, learning_rate=training["learning_rate"], total_steps=steps,
                   weight_decay=training["weight_decay"])
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=training["batch_size"], epochs=training["epochs"],
                        shuffle=True, verbose=1)
    print(f"Trained {steps} steps in {time.perf_counter() - start:.0f} s; "
          f"loss {history.history['loss'][0]:.3f} -> {history.history['loss'][-1]:.3f}")
    return model


def main():
    config = load_config(parse_args("recipes/configs/classifier.yaml", __doc__), CONFIG_SCHEMA)
    causal_lm, ((x, y), (x_eval, y_eval)) = setup(config)
    model = train(causal_lm, x, y, config)
    probabilities = model.predict(x_eval, batch_size=2 * config["training"]["batch_size"], verbose=0)
    scores = {
        "accuracy": evaluate.accuracy(y_eval, probabilities),
        "macro_f1": evaluate.macro_f1(y_eval, probabilities, num_classes=config["recipe"]["num_classes"]),
        "majority_class_accuracy": float(np.mean(y_eval == np.bincount(y).argmax())),
    }
    output_dir = pathlib.Path(config["output_dir"])
    kerasft.save_adapter(model, output_dir / "adapter")
    reloaded = kerasft.load_adapter(gemma3_from_gguf(dtype=config["model"].get("dtype")), output_dir / "adapter")
    check = reloaded.predict({k: v[:8] for k, v in x_eval.items()}, verbose=0)
    scores["reload_max_abs_difference"] = float(np.max(np.abs(check - probabilities[:8])))
    (output_dir / "metrics.json").write_text(json.dumps(scores, indent=2))
    names = data.TWEETS_SENTIMENT_CLASS_NAMES
    print(f"\nHeld-out tweets ({config['data']['eval_split']}, {len(y_eval)} rows, classes {names})")
    for key, value in scores.items():
        print(f"{key:<28}{value:.4f}")
    print(f"\nAdapter saved to {output_dir / 'adapter'}; metrics in {output_dir / 'metrics.json'}")


if __name__ == "__main__":
    main()
