"""A small hyper-parameter search of the main job on the real Gemma 3 270M, against the default.

    flock /tmp/kerasft-real.lock timeout 1800 python bench/search_real.py --steps 10

Runs `kerasft.tuning.search` over `recipes/configs/sft_lora.yaml` (a grid of
learning rate x rank, 6 trials, each `--steps` optimizer steps, validation loss
on WordNet's validation split as the objective), then the default config with
the same step budget, and prints the search's wall time, its table, and the
best trial's held-out (test split) response perplexity next to the default's.
"""

import argparse
import pathlib
import tempfile
import time

from kerasft import finetune, tuning

CONFIG = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "sft_lora.yaml"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--validation-examples", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    space = {"learning_rate": [3e-4, 3e-3, 1e-2], "rank": [4, 16]}
    with tempfile.TemporaryDirectory() as root:
        config = finetune.load_config(CONFIG, [*args.set, f"output_dir={root}"])
        start = time.perf_counter()
        result = tuning.search(config, space=space, budget=6, steps=args.steps,
                               validation_examples=args.validation_examples,
                               output_dir=pathlib.Path(root) / "search")
        search_seconds = time.perf_counter() - start
        table = (pathlib.Path(root) / "search" / "results.md").read_text()
        # The default config, same budget and validation, scored the same way.
        default = tuning.trial_config(config, {}, pathlib.Path(root) / "default", args.steps,
                                      args.validation_examples)
        default_result = finetune.run(default)
    best = result["best"]
    print(f"\nSearch: {len(result['trials'])} trials of {args.steps} steps in "
          f"{search_seconds / 60:.1f} min\n{table}")
    print(f"default (learning_rate={config['training']['learning_rate']}, "
          f"rank={config['recipe']['rank']}): held-out perplexity "
          f"{default_result['after']['perplexity']:.2f}, val loss "
          f"{default_result['training']['val_response_loss']:.4f}")
    print(f"best (learning_rate={best['learning_rate']}, rank={best['rank']}): held-out "
          f"perplexity {best['held_out_perplexity']:.2f}, val loss {best['val_response_loss']:.4f}")
    print(f"best / default held-out perplexity: "
          f"{best['held_out_perplexity'] / default_result['after']['perplexity']:.3f}")


if __name__ == "__main__":
    main()
