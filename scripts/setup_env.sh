#!/usr/bin/env bash
# Creates ./.venv (once) and installs kerasft with everything it needs.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch 2.13; a plain `torch` requirement would pull a CUDA build.
python -m pip install -q "torch==2.13.0" -e ".[torch,test,real,eval]"
