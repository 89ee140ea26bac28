#!/usr/bin/env bash
# One GPU session for issues 7 and 9, in the order that fails fast: set-up, one real CUDA unit
# (unit overhead), trainer-vs-bare throughput, the Magnetic Tile replication, seed packing.
# Every part has its own time limit and writes its figures to $OUT as soon as it ends, so a
# part that runs out of time costs only itself.
#
# Prepared on a CPU machine (the device has no network and only python3 with torch and timm):
#   scarce run examples/magnetic-tile-replication.yaml --stop-after split   # splits + synthetic
#   tar -C runs -czf .carry/mt-store.tgz mt-replication                      # the frozen store
#   pip wheel --no-deps -w .whl .   (+ the wheels of pydantic, minio and what they need)
# Then run from the repository root:  OUT=/tmp/out bash benchmarks/gpu_session.sh
# SMOKE=1 runs the same steps on a CPU with tiny models, to test this script before a session.
set -u -o pipefail
# Figures and logs gather in $WORK; after every step they are packed into $OUT/session.tgz
# (the device returns at most 8 files), the replication's results into $OUT/results.tgz.
FINAL_OUT=${OUT:-/tmp/scarce-gpu-out}
OUT=${WORK:-/tmp/scarce-session}
mkdir -p "$FINAL_OUT" "$OUT"
T0=$(date +%s)
log() {
  echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/session.log"
  tar -C "$OUT" -czf "$FINAL_OUT/session.tgz" . 2>/dev/null
}

if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu; WORKERS=2; BIG="--backbone test_resnet --image-size 64"; SMALL="$BIG"
  SPEC=${SMOKE_SPEC:?SMOKE=1 needs SMOKE_SPEC}; PACK_EPOCHS=1; PACK_SEEDS=2; REPEATS=1
  ROOT=$(pwd); export PATH=$ROOT/.venv/bin:$PATH
else
  DEVICE=cuda; WORKERS=8; SPEC=examples/magnetic-tile-replication.yaml
  BIG="--backbone resnet50 --image-size 224 --batch-size 128"
  SMALL="--backbone resnet18 --image-size 128 --channels 1 --batch-size 64"
  PACK_EPOCHS=5; PACK_SEEDS=15; REPEATS=2
  # Units carry absolute paths (resolved from the spec's folder at plan time) in their config
  # hash: the carried split results are valid only under the path they were made at.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
  ROOT=/work/main
  if [ "$(pwd -P)" != "$ROOT" ]; then
    mkdir -p /work && rm -rf "$ROOT" && cp -a . "$ROOT" && cd "$ROOT" || exit 1
  fi
  mkdir -p runs && tar -C runs -xzf .carry/mt-store.tgz || { log "store unpack failed"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    > "$OUT/gpu.txt" 2>&1
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch, timm, scarce.trainer.runner as r; print('torch', torch.__version__, \
'timm', timm.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" \
  2>&1 | tee "$OUT/versions.txt" || exit 1
log "set-up done"

# 1. A real unit on the device, from process start (fail fast: the rest needs it to work).
timeout 100 python3 benchmarks/unit_overhead.py "$SPEC" --device $DEVICE --repeats $REPEATS \
  --json "$OUT/unit-overhead.json" > "$OUT/unit-overhead.log" 2>&1 \
  || { log "unit overhead FAILED"; tail -30 "$OUT/unit-overhead.log"; exit 1; }
log "unit overhead done"

# 2. Trainer vs bare timm, the issue's GPU target and the replication's model.
timeout 75 python3 benchmarks/trainer_throughput.py --device $DEVICE $BIG --precision bf16 \
  --channels-last --steps 30 --warmup 5 --repeats 3 --json "$OUT/throughput-big.json" \
  > "$OUT/throughput-big.log" 2>&1; log "throughput (big) exit $?"
timeout 45 python3 benchmarks/trainer_throughput.py --device $DEVICE $SMALL --precision bf16 \
  --channels-last --steps 30 --warmup 5 --repeats 3 --json "$OUT/throughput-small.json" \
  > "$OUT/throughput-small.log" 2>&1; log "throughput (small) exit $?"

# 3. The replication (issue 9): every unit, the fidelity stage and the reducer.
START=$(date +%s)
timeout "${REPLICATION_SECONDS:-250}" scarce run "$SPEC" --device $DEVICE \
  --workers $WORKERS --log-dir /tmp/scarce-logs > "$OUT/replication.log" 2>&1
log "replication exit $? after $(( $(date +%s) - START ))s"
STORE=$(python3 -c "import sys; from pathlib import Path; from scarce.operator.spec import \
load_spec; from scarce.operator.plan import plan_benchmark; p=Path(sys.argv[1]); \
print(plan_benchmark(load_spec(p), base_dir=p.resolve().parent).reduce.storage.uri[7:])" "$SPEC")
tar -C "$STORE" -czf "$FINAL_OUT/results.tgz" results reports 2>/dev/null
tail -c 3000 /tmp/scarce-logs/*.log > "$OUT/worker-logs-tail.txt" 2>/dev/null
log "results packed ($(du -h "$FINAL_OUT/results.tgz" | cut -f1))"

# 4. Seed packing: 15 seeds as 15 processes against one process.
timeout 90 python3 benchmarks/seed_packing.py "$SPEC" --device $DEVICE --seeds $PACK_SEEDS \
  --separate-seeds 4 --epochs $PACK_EPOCHS --json "$OUT/seed-packing.json" > "$OUT/seed-packing.log" 2>&1
log "seed packing exit $?"
