"""The main job's forgetting ratio on the shipped general text, without and with replay.

    flock /tmp/kerasft-real.lock timeout 900 python bench/forgetting_replay.py \
        --set training.max_steps=40 --replay 0.25
    python bench/forgetting_replay.py --set model.name=tiny --set data.train_examples=16 ...

Runs `recipes/configs/sft_lora.yaml` through the entry point twice (replay 0
and `--replay`), each with a `ForgettingMonitor` (`training.forgetting`), and
prints the ratio after the last epoch and the held-out response perplexity
(the task) of both runs.
"""

import argparse
import pathlib
import tempfile

from kerasft import finetune

CONFIG = pathlib.Path(__file__).parents[1] / "recipes" / "configs" / "sft_lora.yaml"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay", type=float, default=0.25)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--keep", metavar="DIR", help="write both runs (adapters, metrics) under DIR")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        for fraction in (0.0, args.replay):
            overrides = [*args.set, f"output_dir={root}/replay_{fraction}",
                         "training.forgetting={threshold: 1000.0}",
                         f"data.replay_fraction={fraction}"]
            result = finetune.run(finetune.load_config(CONFIG, overrides))
            ratios = result["training"]["forgetting_ratio_per_epoch"]
            rows.append((fraction, ratios[-1], result["before"]["perplexity"],
                         result["after"]["perplexity"]))
    print(f"\n{'replay':>8}{'forgetting':>12}{'task ppl before':>17}{'task ppl after':>16}")
    for fraction, ratio, before, after in rows:
        print(f"{fraction:>8.2f}{ratio:>12.3f}{before:>17.2f}{after:>16.2f}")


if __name__ == "__main__":
    main()
