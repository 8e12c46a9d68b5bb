#!/bin/bash
# The real-size benchmark (issue 25) on a bare GPU machine, in one short run.
#
#   bash scripts/gpu_real_size.sh prepare        # here, with network: the engine's packages as cp312 wheels
#                                                # unpacked into out/gpu-site.tar.xz (33 MB; with the tree's 34
#                                                # MB, just under the device tool's 64 MiB: carry it alone)
#   OUT=/tmp/out bash scripts/gpu_real_size.sh   # there (python3 with CUDA torch, no network), from the
#                                                # repository root, out/gpu-site.tar.xz carried along
#
# The GPU machines lent to this project have python3 3.12 with torch and transformers but not rasterio,
# shapely, pyproj or affine, and reach no package index: `prepare` downloads those here and packs them
# (TRANSFORMERS=1 adds this project's transformers 5.24, 13 MB more, where the machine's 5.17 falls short); the run unpacks them into /tmp/gpu-site, puts them first on
# PYTHONPATH and runs benchmarks/real_size.py on CUDA, model by model, each under its own time limit,
# writing $OUT/cuda_<model>.json and the report $OUT/real_size_cuda.txt. MODELS picks the models
# (default: the quick three, Florence-2-large, CLIP ViT-L/14, SAM 2.1 and Qwen2.5-VL-3B; Qwen2.5-VL-7B
# writes a 15 GB random checkpoint first: name it only with time to spare).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ "${1:-}" = prepare ]; then
  rm -rf out/gpu-wheels out/gpu-site && mkdir -p out/gpu-wheels out/gpu-site
  .venv/bin/python -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --dest out/gpu-wheels rasterio==1.4.4 shapely==2.1.2 pyproj==3.7.2 affine==2.4.0 click-plugins cligj \
    ${TRANSFORMERS:+transformers==5.24.0} || exit 1
  for w in out/gpu-wheels/*.whl; do .venv/bin/python -m zipfile -e "$w" out/gpu-site || exit 1; done
  tar -C out -cf - gpu-site | xz -9e -T2 > out/gpu-site.tar.xz && du -h out/gpu-site.tar.xz
  exit 0
fi
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
MODELS=${MODELS:-florence2-base,sam-vit-base,clip-vit-base-patch16,florence2-large,clip-vit-large-patch14,sam2.1-hiera-base-plus,qwen2.5-vl-3b}
LIMIT=${LIMIT:-150}  # seconds per model, building its checkpoint included
if [ -f out/gpu-site.tar.xz ]; then
  mkdir -p /tmp && tar -C /tmp -xJf out/gpu-site.tar.xz && export PYTHONPATH=/tmp/gpu-site:$ROOT
else
  export PYTHONPATH=$ROOT
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for model in ${MODELS//,/ }; do
  timeout "$LIMIT" $PY benchmarks/real_size.py --device cuda --models "$model" --repeat 10 --tiles 16 \
    --cache /tmp/real_size --json "$OUT/cuda_$model.json" >> "$OUT/real_size_cuda.txt" 2>> "$OUT/err.txt"
  echo "$model exit $?" | tee -a "$OUT/real_size_cuda.txt"
done
