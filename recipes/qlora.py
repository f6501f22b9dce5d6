"""QLoRA-tune the real Gemma 3 270M on WordNet definitions: NF4 base, LoRA on top.

Same steps as `recipes/sft_lora.py` (whose functions it reuses): load, evaluate,
quantize + wrap + train, evaluate, save the adapter; then merge the adapter and
print the largest logit change the merge caused.

    python recipes/qlora.py --config recipes/configs/qlora.yaml
    python recipes/qlora.py --set recipe.quantization=int4 --set training.epochs=2
"""

import os

# kerasft runs on JAX or PyTorch; keras.json may name another backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np  # noqa: E402

from kerasft import data  # noqa: E402
from kerasft.recipes import QLoRA  # noqa: E402
from sft_lora import (  # noqa: E402
    CONFIG_SCHEMA,
    evaluate_model,
    load_config,
    parse_args,
    report,
    save_results,
    setup,
    train,
)


# sft_lora.py's keys, plus the calibration data and the merge settings.
QLORA_CONFIG_SCHEMA = {
    **CONFIG_SCHEMA,
    "data": CONFIG_SCHEMA["data"] + ["calibration_examples?"],
    "merge": ["requantize"],
}


def main():
    config = load_config(parse_args("recipes/configs/qlora.yaml", __doc__), QLORA_CONFIG_SCHEMA)
    cfg = config["data"]
    model, train_records, held_out = setup(config)
    before = evaluate_model(model, held_out, config)
    apply_kwargs = {}
    fits_error = config["recipe"].get("init") == "residual" or config["recipe"].get(
        "residual_rank"
    )
    calibration_examples = fits_error and cfg.get("calibration_examples")
    if calibration_examples:
        # Training examples (prompt + response), never held-out words; a
        # prefix of the (randomly ordered) sample is itself a uniform sample.
        apply_kwargs["calibration_data"] = data.instruction_batches(
            train_records[:calibration_examples], model.preprocessor.tokenizer,
            template=cfg["template"], sequence_length=cfg["sequence_length"],
            batch_size=16, shuffle=False, truncate="response",
        )
    # QLoRA.apply quantizes, wraps, and fits the quantization error
    # (weighted by the calibration activations).
    recipe = train(model, train_records, config, **apply_kwargs)
    errors = getattr(recipe, "initialization_report", None)
    if errors:
        start, end = np.mean(list(errors.values()), axis=0)
        print(f"Fitted the quantization error: mean relative output error of the "
              f"{len(errors)} quantized targets {start:.3f} -> {end:.3f}")
    after = evaluate_model(model, held_out, config)
    output_dir = save_results(model, before, after, config)
    report(before, after, held_out, config)

    x, _, _ = data.instruction_batches(
        held_out[:8], model.preprocessor.tokenizer, template=cfg["template"],
        sequence_length=cfg["sequence_length"], batch_size=8, shuffle=False,
        truncate="response",
    ).as_arrays()
    merged = QLoRA.merge(model, requantize=config["merge"]["requantize"], batch=x)
    print(f"\nMerged {len(merged['merged'])} layers (requantize="
          f"{config['merge']['requantize']}): max |logit change| = "
          f"{merged['max_abs_logit_difference']:.2e}")
    print(f"Adapter saved to {output_dir / 'adapter'}; metrics in {output_dir / 'metrics.json'}")


if __name__ == "__main__":
    main()
