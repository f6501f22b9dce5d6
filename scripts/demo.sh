#!/usr/bin/env bash
# The main job: LoRA instruction tuning of the real Gemma 3 270M on WordNet
# definitions, with a before/after evaluation. Extra arguments go to the recipe
# script, e.g. `bash scripts/demo.sh --config recipes/configs/sft_lora_gpu.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND="${KERAS_BACKEND:-jax}"
if [ $# -eq 0 ]; then set -- --config recipes/configs/sft_lora.yaml; fi
exec python recipes/sft_lora.py "$@"
