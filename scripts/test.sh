#!/usr/bin/env bash
# Runs the whole test suite: the default tests under JAX and under PyTorch,
# then the slow tests (real Gemma 3 270M checkpoint) once under JAX.
#   bash scripts/test.sh           # everything
#   bash scripts/test.sh --fast    # skip the slow tests
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
. .venv/bin/activate
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
status=0
for backend in jax torch; do
  echo "=== default tests, KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider tests || status=1
done
if [ "${1:-}" != "--fast" ]; then
  echo "=== slow tests (real checkpoint), KERAS_BACKEND=jax ==="
  KERAS_BACKEND=jax python -m pytest -q -p no:cacheprovider -m slow tests
  rc=$?
  # Exit code 5: no slow test collected, which is not a failure.
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=1; fi
fi
exit $status
