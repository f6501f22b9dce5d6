#!/usr/bin/env bash
# Creates ./.venv (once) and installs kerasft with every extra (both backends,
# the real checkpoint, metrics, references, tuning, plots, tests).
# Quiet: pip's output goes to .venv/setup.log, shown only if pip fails; a run
# whose pyproject.toml and this script are unchanged since the last successful
# one skips pip entirely (set KERASFT_REINSTALL=1 to force it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
log=.venv/setup.log
stamp=.venv/setup.stamp
want="$(cat pyproject.toml setup.py scripts/setup_env.sh | sha256sum | cut -d' ' -f1)"
if [ "${KERASFT_REINSTALL:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip_quiet() {
  if ! python -m pip --disable-pip-version-check --no-input -q "$@" >>"$log" 2>&1; then
    echo "setup_env.sh: pip $* failed; its output:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
: >"$log"
echo "Installing kerasft and its dependencies into .venv (log: $log) ..."
# torch 2.13.0 from the configured index (PyPI by default; the build CI and
# this repository's machines get there runs on CPU). To choose a build, set
# TORCH_INDEX_URL, e.g. https://download.pytorch.org/whl/cpu (CPU only) or
# .../whl/cu128 (a GPU); if that index cannot be reached, the default index's
# build is installed. An installed torch 2.13.0 of any build is kept.
if ! python -c 'import importlib.metadata as m, sys; sys.exit(m.version("torch").split("+")[0] != "2.13.0")' 2>/dev/null; then
  if [ -z "${TORCH_INDEX_URL:-}" ] || ! python -m pip --disable-pip-version-check -q install \
      --timeout 15 --retries 1 --index-url "$TORCH_INDEX_URL" "torch==2.13.0" >>"$log" 2>&1; then
    [ -n "${TORCH_INDEX_URL:-}" ] && echo "($TORCH_INDEX_URL not reachable: torch 2.13.0 from the default index)"
    pip_quiet install "torch==2.13.0"
  fi
fi
pip_quiet install -e ".[jax,torch,tfds,real,eval,bench,tuning,plots,test]"
# llama.cpp for the GGUF loop's slow tests (tests/models/llama_cpp_runner.py):
# llama-cpp-cffi's prebuilt CPU library. --no-deps: its Python layer pins
# transformers < 5, and the tests load only the compiled module.
if [ "$(uname -sm)" = "Linux x86_64" ]; then
  python -m pip --disable-pip-version-check --no-input -q install cffi pycparser \
      "llama-cpp-cffi==0.4.42" --no-deps --only-binary=llama-cpp-cffi >>"$log" 2>&1 \
    || echo "(llama-cpp-cffi not installed: the llama.cpp checks will skip)"
fi
echo "$want" >"$stamp"
echo "Installed (log: $log)."
