#!/usr/bin/env bash
# The main job: LoRA instruction tuning of the real Gemma 3 270M on WordNet
# definitions, with a before/after evaluation, through the one training entry
# point (`kerasft train`, here as `python -m kerasft.finetune train`). Extra
# arguments go to it, e.g.
# `bash scripts/demo.sh --config recipes/configs/sft_lora_gpu.yaml` or
# `bash scripts/demo.sh --set training.epochs=2`; `--verbose` shows the
# TensorFlow / absl lines kerasft keeps off the console.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh  # quiet: pip's output goes to .venv/setup.log
. .venv/bin/activate
export PYTHONUNBUFFERED=1 KERAS_BACKEND="${KERAS_BACKEND:-jax}"
# A later --config in "$@" replaces this one (argparse keeps the last).
exec python -m kerasft.finetune train --config recipes/configs/sft_lora.yaml "$@"
