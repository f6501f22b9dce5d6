"""Instruction-tune a Gemma model with DoRA (weight-decomposed LoRA) on WordNet definitions.

    python recipes/dora.py --model tiny            # seconds, random tiny model
    python recipes/dora.py --model gemma3-270m     # the real Gemma 3 270M

`recipes/ia3.py` and `recipes/adapters.py` run this same script with their
own config; every setting lives in the config's `recipe:`, `data:` and
`training:` sections.
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse
import pathlib

import keras
import keras_hub

import kerasft
from kerasft import configs, data, testing
from kerasft.recipes.base import recipe_from_config

# Every key the script (and ia3.py, adapters.py, prefix_tuning.py,
# prompt_tuning.py) reads; `?` marks an optional one (see kerasft.configs).
CONFIG_SCHEMA = {
    "seed": None,
    "output_dir": None,
    "recipe": configs.RECIPE,
    "data": ["template", "train_examples", "sequence_length"],
    "training": ["batch_size", "epochs", "learning_rate", "gradient_accumulation_steps?"],
}


def load_model(name, sequence_length):
    """`tiny`: a random two-block Gemma 3 with the tiny test tokenizer; or the real 270M."""
    if name == "gemma3-270m":
        from kerasft.models import gemma3_from_gguf

        return gemma3_from_gguf()
    if name != "tiny":
        raise ValueError(f"`--model` must be 'tiny' or 'gemma3-270m'. Received: model={name!r}")
    from kerasft.data.testing_tokenizer import tiny_gemma_tokenizer

    tokenizer = tiny_gemma_tokenizer()
    config = testing.tiny_gemma3_backbone().get_config()
    backbone = keras_hub.models.Gemma3Backbone.from_config(
        {**config, "vocabulary_size": tokenizer.vocabulary_size()}
    )
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)


def main(default_config="recipes/configs/dora.yaml"):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=default_config)
    parser.add_argument("--model", default="tiny", choices=["tiny", "gemma3-270m"])
    args = parser.parse_args()
    config = configs.load_script_config(args.config, schema=CONFIG_SCHEMA)
    cfg, training = config["data"], config["training"]
    keras.utils.set_random_seed(config["seed"])

    model = load_model(args.model, cfg["sequence_length"])
    recipe = recipe_from_config(config["recipe"])
    recipe.apply(model)
    trainable = int(sum(keras.ops.size(v) for v in model.trainable_weights))
    print(f"{recipe}: {trainable:,} trainable parameters")

    # The shipped split is alphabetical: sample across the whole alphabet.
    records = data.sample_records(data.load_wordnet("train"), cfg["train_examples"], config["seed"])
    batches = data.instruction_batches(
        records, model.preprocessor.tokenizer, template=cfg["template"],
        sequence_length=cfg["sequence_length"], batch_size=training["batch_size"],
        seed=config["seed"], truncate="response",
    )  # shuffled with `seed`, in a new order every epoch
    accumulation = training.get("gradient_accumulation_steps", 1)
    fit_batches, steps_per_epoch = configs.accumulated_batches(batches, accumulation)
    recipe.compile(model, learning_rate=training["learning_rate"],
                   total_steps=steps_per_epoch * training["epochs"],
                   gradient_accumulation_steps=accumulation)
    with kerasft.pretokenized(model):  # the batches are token ids already
        history = model.fit(fit_batches, epochs=training["epochs"], verbose=2)
    losses = history.history["loss"]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    output_dir = pathlib.Path(config["output_dir"])
    kerasft.save_adapter(model, output_dir / "adapter")
    prompt = data.get_template(cfg["template"]).render_prompt(data.load_wordnet("test")[0]["prompt"])
    print(model.generate(prompt, max_length=cfg["sequence_length"]))
    print(f"Adapter saved to {output_dir / 'adapter'}")


if __name__ == "__main__":
    main()
