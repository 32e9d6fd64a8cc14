#!/usr/bin/env bash
# Build .gpu_carry/ (git-ignored): what the GPU machine lacks, for scripts/gpu_bench.sh there.
#   wheels/        datasets, dill, multiprocess (the image has no `datasets`) and the
#                  sentence-transformers version this repo is tested with, for Python 3.12
#   minilm-fp16/   all-MiniLM-L6-v2 from the bundled offline copy, stored in fp16 (half the size;
#                  gpu_bench.sh turns it back into fp32 before training)
#   Financial-QA-10k.csv   the benchmark data (../shared does not travel)
# Everything must fit the 64 MiB the device tool carries, with the working tree.
#
#   bash scripts/gpu_carry.sh [DATA_CSV]
# then, with the device tool: command `bash scripts/gpu_bench.sh`, carry [".gpu_carry"].
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${1:-../shared/data/financial-qa-10k/Financial-QA-10k.csv}
OUT=.gpu_carry
[ -f "$DATA" ] || { echo "gpu_carry: no data file at $DATA; pass its path as the first argument" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT/wheels"
ST_VERSION=$("$PY" -c 'import sentence_transformers as s; print(s.__version__)')
DS_VERSION=$("$PY" -c 'import datasets as d; print(d.__version__)')
"$PY" -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: -d "$OUT/wheels" \
    "datasets==$DS_VERSION" dill multiprocess "sentence-transformers==$ST_VERSION"
HF_HUB_OFFLINE=1 "$PY" - "$OUT/minilm-fp16" <<'PY'
import sys

from job.models import load_model

model = load_model("bundled:all-MiniLM-L6-v2")
model.half().save(sys.argv[1])
PY
cp "$DATA" "$OUT/Financial-QA-10k.csv"
TOTAL_KIB=$(du -sk "$OUT" | cut -f1)
TREE_KIB=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
echo "gpu_carry: $OUT is $((TOTAL_KIB / 1024)) MiB, the tracked tree $((TREE_KIB / 1024)) MiB (limit 64 MiB together)"
[ $((TOTAL_KIB + TREE_KIB)) -lt $((64 * 1024)) ] || { echo "gpu_carry: too large to carry" >&2; exit 1; }
