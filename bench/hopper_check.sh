#!/usr/bin/env bash
# On a Hopper GPU machine: the SASS check of the wgmma kernels, the bit-exact GPU tests, and the
# seed model's benchmark for both convolution kernel families (mma, auto) and both storages,
# with a per-layer profile. Logs and JSON go to OUT_DIR; a summary table is printed last.
#   bench/hopper_check.sh CARRY_DIR OUT_DIR [BATCHES] [TESTS]
# CARRY_DIR is what bench/pack_device.sh made (bin/, lib/); run it from the repository
# root (the tests read models/ from there). TESTS: a gtest filter, or "none".
# Environment: FAMILIES (default "mma auto"): the kernel families benchmarked; AB (e.g.
# "NIBBLE_CUDA_UNFOLD_STEM=0 NIBBLE_CUDA_PDL=0"): also benchmark auto INT8 (Offline and
# SingleStream) with each of those settings in turn, for same-run comparisons; NCU_SKIPS (e.g.
# "6 7"): Nsight Compute on those launches of conv_wgmma_kernel (counted from 0, in launch order,
# with auto and 8-bit storage at batch 256); SASS=1: the whole binary's SASS, gzipped.
set -uo pipefail
C=$(cd "$1" && pwd) OUT=$2 BATCHES=${3:-256,1024} TESTS=${4:-Cuda*}
FAMILIES=${FAMILIES:-mma auto} AB=${AB:-} NCU_SKIPS=${NCU_SKIPS:-} SASS=${SASS:-0}
mkdir -p "$OUT"
for f in "$C"/bin/*.xz "$C"/lib/*.xz; do [ -e "$f" ] && xz -d -f "$f"; done  # pack_device.sh compresses them
export LD_LIBRARY_PATH="$C/lib:${LD_LIBRARY_PATH:-}" NIBBLE_SOURCE_DIR="$(pwd)" NIBBLE_SEED_DIR="$(pwd)/models/mlperf-v0.5-int4-resnet50"
N="$C/bin/nibble"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv
  echo "== matrix, copy-engine and barrier instructions in the binary's SASS"
  cuobjdump --dump-sass "$N" | grep -oE "IGMMA\.[A-Z0-9.x]+|QGMMA\.[A-Z0-9.x]+|HGMMA\.[A-Z0-9.x]+|IMMA\.[A-Z0-9.]+|UTMALDG\.[A-Z0-9.]+|UTMALDG|SYNCS\.[A-Z0-9.]+" | sort | uniq -c
} > "$OUT/device.txt" 2>&1
if [ "$TESTS" != none ]; then
  timeout 420 "$C/bin/nibble_tests" --gtest_filter="$TESTS" > "$OUT/gtest.txt" 2>&1
  echo "gtest exit $?" >> "$OUT/gtest.txt"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[       OK|FAILED|Failure|differ|gtest exit" "$OUT/gtest.txt" | head -30
fi
for kernels in $FAMILIES; do
  for storage in int8 native; do
    flag=""; [ "$storage" = int8 ] && flag="--int8-storage"
    prof=""; [ "$kernels" = auto ] && prof="--profile"
    timeout 120 "$N" bench "$NIBBLE_SEED_DIR/model" --device cuda --batch "$BATCHES" $flag --kernels $kernels --duration 1 $prof \
      --json "$OUT/bench_${kernels}_$storage.json" > "$OUT/bench_${kernels}_$storage.txt" 2>&1
    echo "bench $kernels $storage exit $?" >> "$OUT/bench_${kernels}_$storage.txt"
  done
  timeout 60 "$N" bench "$NIBBLE_SEED_DIR/model" --device cuda --scenario singlestream --kernels $kernels --duration 1 \
    --profile --json "$OUT/single_$kernels.json" > "$OUT/single_$kernels.txt" 2>&1
done
for ab in $AB; do
  tag=$(echo "$ab" | tr -c 'A-Za-z0-9\n' _)
  env "$ab" timeout 120 "$N" bench "$NIBBLE_SEED_DIR/model" --device cuda --batch "$BATCHES" --int8-storage --kernels auto --duration 1 \
    --json "$OUT/bench_ab_$tag.json" > "$OUT/bench_ab_$tag.txt" 2>&1
  echo "bench $ab exit $?" >> "$OUT/bench_ab_$tag.txt"
  env "$ab" timeout 60 "$N" bench "$NIBBLE_SEED_DIR/model" --device cuda --scenario singlestream --kernels auto --duration 1 \
    --json "$OUT/single_ab_$tag.json" > "$OUT/single_ab_$tag.txt" 2>&1
done
for skip in $NCU_SKIPS; do
  timeout 150 ncu --clock-control none --kernel-name regex:conv_wgmma --launch-skip "$skip" --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section LaunchStats \
    --section Occupancy --section MemoryWorkloadAnalysis --section InstructionStats --section SourceCounters \
    "$N" bench "$NIBBLE_SEED_DIR/model" --device cuda --batch 256 --int8-storage --kernels auto --duration 0.1 --contexts 1 \
    > "$OUT/ncu_wgmma_$skip.txt" 2>&1
  grep -E "conv_wgmma_kernel<|Duration|Compute \(SM\) Throughput|Memory Throughput|Issued Warp|Executed Instructions  " \
    "$OUT/ncu_wgmma_$skip.txt" | head -8
done
[ "$SASS" = 1 ] && cuobjdump --dump-sass "$N" | gzip -6 > "$OUT/sass.txt.gz"
cat "$OUT/device.txt"
python3 - "$OUT" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
print("| kernels | storage | batch | img/s Offline | GPU img/s | compute ms |")
runs = [(k, s, f"{out}/bench_{k}_{s}.json") for k in ("mma", "auto") for s in ("int8", "native")]
runs += [(os.path.basename(p)[9:-5], "int8", p) for p in sorted(glob.glob(f"{out}/bench_ab_*.json"))]
for k, s, p in runs:
    if not os.path.exists(p):
        continue
    j = json.load(open(p))
    for r in j["results"]:
        print(f"| {k} | {s} | {r['batch']} | {r['images_per_second']:,.0f} | {r.get('gpu_images_per_second', 0):,.0f} | {r['gpu_compute_ms']['median']:.3f} |")
for p in sorted(glob.glob(f"{out}/single_*.json")):
    r = json.load(open(p))["results"][0]
    print(f"singlestream {os.path.basename(p)[7:-5]}: p90 {r['latency_ms']['p90']:.3f} ms, median {r['latency_ms']['median']:.3f} ms")
PY
