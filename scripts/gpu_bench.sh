#!/usr/bin/env bash
# On the GPU machine (device tool), after scripts/gpu_carry.sh here:
#   command: bash scripts/gpu_bench.sh     carry: [".gpu_carry"]
# Runs the full financial-qa-10k protocol (bench/quality.py: base, blog, default, and the
# variants below) and the GPU throughput parts (bench/throughput.py), writing JSON and logs to
# $OUT (the device tool brings them back). QUICK=1 shrinks every budget, to rehearse on a CPU.
# VARIANTS, PRESETS and QUALITY_TIMEOUT override the defaults below.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_bench_out}
mkdir -p "$OUT"
CARRY=.gpu_carry
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
[ -d "$CARRY" ] || { echo "gpu_bench: no $CARRY; run scripts/gpu_carry.sh first and carry it" >&2; exit 2; }

# Wheels the image lacks (datasets) or has in another version (sentence-transformers).
for whl in "$CARRY"/wheels/*.whl; do
    name=$(basename "$whl" | cut -d- -f1 | tr _ -)
    version=$(basename "$whl" | cut -d- -f2)
    have=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    [ "$have" = "$version" ] || "$PY" -m pip install --quiet --no-deps "$whl" || exit 3
done
"$PY" - <<'PY' | tee "$OUT/versions.txt"
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("sentence-transformers", "transformers", "datasets", "accelerate", "tokenizers"):
    print(name, m.version(name))
PY
MODEL=/tmp/minilm-fp32
"$PY" -c "
import sys, torch
from sentence_transformers import SentenceTransformer
SentenceTransformer(sys.argv[1], device='cpu', model_kwargs={'dtype': torch.float32}).float().save(sys.argv[2])
" "$CARRY/minilm-fp16" "$MODEL" || exit 4
DATA=$CARRY/Financial-QA-10k.csv

REDUCE=()
STEPS=60
if [ "${QUICK:-0}" = 1 ]; then
    REDUCE=(--train-limit 64 --epochs 1 --max-seq-length 64 --test-limit 40 --val-rows 40)
    STEPS=4
fi
PRESETS=${PRESETS:-base,blog,default}
# the levers of the full-scale quality issue, each on top of the default recipe (choose on validation)
VARIANTS=${VARIANTS-"nohn:hard_negatives=0 cached128:loss=cached_mnrl,batch_size=128 cached256:loss=cached_mnrl,batch_size=256 gist:loss=gist cachedgist256:loss=cached_gist,batch_size=256 sym:loss_directions=query_to_doc,doc_to_query hn3:hard_negatives=3 lg16:length_grouping=16 attn0:attention_dropout=0 soup3:average_checkpoints=3 depth100:hard_negative_depth=100"}
VARIANT_ARGS=()
for v in $VARIANTS; do VARIANT_ARGS+=(--variant "$v"); done

timeout "${THROUGHPUT_TIMEOUT:-150}" "$PY" bench/throughput.py --data "$DATA" --parts pipeline,minilm --minilm "$MODEL" \
    --steps "$STEPS" --out "$OUT/throughput.json" > "$OUT/throughput.log" 2>&1
echo "gpu_bench: throughput exit $?"; grep -E '^(setup|pipeline|minilm):' "$OUT/throughput.log"

timeout "${QUALITY_TIMEOUT:-420}" "$PY" bench/quality.py --data "$DATA" --model "$MODEL" --presets "$PRESETS" \
    "${VARIANT_ARGS[@]}" "${REDUCE[@]}" --out "$OUT/quality.json" > "$OUT/quality.log" 2>&1
status=$?
echo "gpu_bench: quality exit $status"
grep -E '^(protocol|\|)|validation NDCG|peak' "$OUT/quality.log"
exit $status
