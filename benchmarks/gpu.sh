#!/usr/bin/env bash
# Localization and catalog-indexing benchmarks on one GPU with a random-weight DGTRS ViT-B/16, printed as JSON.
# One call, under 10 minutes on an H100: encode throughput vs bare encode_image, query latency on
# an indexed 10k x 10k raster, peak RSS while indexing 5k and 20k rasters, speed-up over the
# reference recipe. Needs an interpreter with dgtrs-geo's dependencies (PYTHON, or .venv).
# Usage: bash benchmarks/gpu.sh   (writes localize-gpu.json, worker-gpu.json and catalog-gpu.json to $OUT or .)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] && python=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
out="${OUT:-.}/localize-gpu.json"
timeout 285 "$python" benchmarks/localize.py \
    --arch dgtrs-vit-b-16 --device cuda --batch 256 \
    --encode-size 8192 --query-size 10000 --rss-shapes 5000x5000,20000x20000 --reference-size 384 \
    | tee "$out"
echo "wrote $out" >&2
# The plugin's view: worker start, first and warm queries through the real worker, on the GPU.
timeout 120 "$python" benchmarks/worker.py --arch dgtrs-vit-b-16 --device cuda | tee "${OUT:-.}/worker-gpu.json"
# Catalog indexing vs the single-raster pipeline and bare encoding, 200 scenes of 512 px, ViT-B/16.
timeout 180 "$python" benchmarks/catalog.py --only indexing --arch dgtrs-vit-b-16 --device cuda \
    --scenes 200 --scene-px 512 --repeats 2 | tee "${OUT:-.}/catalog-gpu.json"
