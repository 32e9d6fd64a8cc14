#!/usr/bin/env bash
# Build the venvs that check the saved model in other serving stacks (tests/test_compat.py, bench/serve_load.py):
#   .venv-st3       sentence-transformers 3.4.1 + transformers 4.57.6 (what infinity-emb 0.0.78 pins)
#   .venv-st5       sentence-transformers 5.x + transformers 4.57.6 + optimum-onnx (backend="onnx" loads the exports)
#   .venv-infinity  infinity-emb 0.0.78 (its server, torch engine)
# Each: torch==2.13.0 first (the CPU wheel; any other spec pulls a CUDA build), then the pins. Idempotent: a venv
# whose stamp matches its pins is kept. Usage: scripts/compat_venvs.sh [st3] [st5] [infinity]  (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
declare -A PINS=(
  [st3]="sentence-transformers==3.4.1 transformers==4.57.6"
  [st5]="sentence-transformers==5.7.0 transformers==4.57.6 optimum==2.1.0 optimum-onnx[onnxruntime]==0.1.0"
  [infinity]="infinity-emb[server,torch]==0.0.78"
)
for name in "${@:-st3 st5 infinity}"; do
  for n in $name; do
    venv=".venv-$n"
    want="$TORCH_SPEC ${PINS[$n]}"
    if [ -f "$venv/.compat-stamp" ] && [ "$(cat "$venv/.compat-stamp")" = "$want" ]; then
      echo "$venv: up to date"; continue
    fi
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "$TORCH_SPEC"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet ${PINS[$n]}
    echo "$want" > "$venv/.compat-stamp"
    echo "$venv: built ($want)"
  done
done
