#!/usr/bin/env bash
# The main job: LoRA instruction tuning of the real Gemma 3 270M on WordNet
# definitions, with a before/after evaluation, through the one training entry
# point (`python -m kerasft.finetune`). Extra arguments go to it, e.g.
# `bash scripts/demo.sh --config recipes/configs/sft_lora_gpu.yaml` or
# `bash scripts/demo.sh --set training.epochs=2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND="${KERAS_BACKEND:-jax}"
# A later --config in "$@" replaces this one (argparse keeps the last).
exec python -m kerasft.finetune --config recipes/configs/sft_lora.yaml "$@"
