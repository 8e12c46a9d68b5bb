#!/bin/bash
# bash scripts/gpu_train.sh   (on a bare GPU machine, from the repository root; how v11 was trained)
#
# Trains default_v11_gpu.toml and, beside it on the same data cache, the same recipe with v10's
# config (no class balance) as a control, then packs both exports into 15 MB parts under $OUT
# (cat model_v11.tar.part* | tar -xf - -C out/ puts them back together as out/gpu-v11/).
#
#   MINUTES=8.0 MINUTES_B=7.6 OUT=/tmp/gpu-out bash scripts/gpu_train.sh
#
# A machine without this project's packages needs them on PYTHONPATH first: the session that
# trained v11 carried shapely, rasterio, pyproj, affine, regex and transformers 5.24 as cp312
# wheels unpacked into one tar.xz (README, "The shipped model").
# While the data is made (16 processes, ~140 s for 4000 scenes and 2000 pairs) it runs a 3-step
# smoke training on the GPU (a CUDA bug shows in seconds) and the engine benchmark on CUDA.
set -u
PY=${PY:-python3}
MINUTES=${MINUTES:-8.0}
MINUTES_B=${MINUTES_B:-7.6}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=${PYTHONPATH:-}:$PWD
LOG=$OUT/log.txt
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
ulimit -n 65536 2>/dev/null
say "start $(nvidia-smi --query-gpu=name,memory.used --format=csv,noheader 2>/dev/null) cpus=$(nproc)"
mkdir -p out/train/shared_cache out/train/gpu_v11 out/train/gpu_v10
ln -sfn ../shared_cache out/train/gpu_v11/cache
ln -sfn ../shared_cache out/train/gpu_v10/cache
CFG=training/recipes/default/default_v11_gpu.toml
$PY -m training default --config $CFG --fresh --set max_minutes=$MINUTES ${EXTRA:-} \
  --set work_dir=out/train/gpu_v11 --set out=out/gpu-v11 > "$OUT/train_v11.txt" 2>&1 &
A=$!
$PY -m training default --config training/recipes/default/tiny.toml --fresh --set model=default_v11 --set max_steps=3 \
  --set batch_size=8 --set loader_workers=2 --set out=/tmp/smoke/model --set work_dir=/tmp/smoke/work > /tmp/smoke.txt 2>&1
SMOKE=$?
say "smoke exit $SMOKE: $(grep -E 'parameters on|trained|Error' /tmp/smoke.txt | tail -3)"
if [ $SMOKE -ne 0 ]; then tail -40 /tmp/smoke.txt >> "$LOG"; kill $A; sleep 5; kill -9 $A 2>/dev/null; exit 1; fi
timeout 200 $PY benchmarks/engine.py --repeat 10 --device cuda --cache /tmp/rsa-bench > "$OUT/bench.txt" 2>&1
say "bench exit $?"
# the control starts once the data is made (meta.json written), so the two do not make it twice
while ! ls out/train/shared_cache/*/meta.json > /dev/null 2>&1 && kill -0 $A 2>/dev/null; do sleep 2; done
say "data ready: $(cat out/train/shared_cache/*/meta.json 2>/dev/null)"
$PY -m training default --config $CFG --fresh --set max_minutes=$MINUTES_B ${EXTRA:-} --set model=default_v10 \
  --set work_dir=out/train/gpu_v10 --set out=out/gpu-v10 > "$OUT/train_v10.txt" 2>&1 &
B=$!
while kill -0 $A 2>/dev/null || kill -0 $B 2>/dev/null; do
  sleep 30
  say "gpu: $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null) | $(tail -c 300 "$OUT/train_v11.txt" | tr '\r' '\n' | tail -1)"
done
wait $A; say "v11 exit $?"; wait $B; say "v10 exit $?"
for v in v11 v10; do
  [ -f out/gpu-$v/model.safetensors ] && tar -C out -cf - gpu-$v | split -b 15m - "$OUT/model_$v.tar.part"
done
for f in "$OUT"/train_v1*.txt; do tr '\r' '\n' < "$f" | grep -v "^train default" | tail -c 200000 > "$f.tmp"; mv "$f.tmp" "$f"; done
say "done"; ls -la "$OUT" | tee -a "$LOG"
