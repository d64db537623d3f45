#!/usr/bin/env bash
# On a Hopper GPU machine: the SASS check of the wgmma kernels, the bit-exact GPU tests, and the
# seed model's benchmark for both convolution kernel families (mma, auto) and both storages,
# with a per-layer profile. Logs and JSON go to OUT_DIR; a summary table is printed last.
#   bench/hopper_check.sh CARRY_DIR OUT_DIR [BATCHES] [TESTS]
# CARRY_DIR is what bench/pack_device.sh made (bin/, lib/, seed/); run it from the repository
# root (the tests read models/ from there). TESTS: a gtest filter, or "none".
set -uo pipefail
C=$(cd "$1" && pwd) OUT=$2 BATCHES=${3:-256,1024} TESTS=${4:-Cuda*}
mkdir -p "$OUT"
for f in "$C"/bin/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done  # pack_device.sh compresses them
export LD_LIBRARY_PATH="$C/lib:${LD_LIBRARY_PATH:-}" NIBBLE_SOURCE_DIR="$(pwd)" NIBBLE_SEED_DIR="$C/seed"
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
for kernels in mma auto; do
  for storage in int8 native; do
    flag=""; [ "$storage" = int8 ] && flag="--int8-storage"
    prof=""; [ "$kernels" = auto ] && prof="--profile"
    timeout 120 "$N" bench "$C/seed/model" --device cuda --batch "$BATCHES" $flag --kernels $kernels --duration 1 $prof \
      --json "$OUT/bench_${kernels}_$storage.json" > "$OUT/bench_${kernels}_$storage.txt" 2>&1
    echo "bench $kernels $storage exit $?" >> "$OUT/bench_${kernels}_$storage.txt"
  done
  timeout 60 "$N" bench "$C/seed/model" --device cuda --scenario singlestream --kernels $kernels --duration 1 \
    --json "$OUT/single_$kernels.json" > "$OUT/single_$kernels.txt" 2>&1
done
cat "$OUT/device.txt"
python3 - "$OUT" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
print("| kernels | storage | batch | img/s Offline | GPU img/s | compute ms |")
for k in ("mma", "auto"):
    for s in ("int8", "native"):
        p = f"{out}/bench_{k}_{s}.json"
        if not os.path.exists(p):
            print(f"| {k} | {s} | missing |"); continue
        j = json.load(open(p))
        for r in j["results"]:
            print(f"| {k} | {s} | {r['batch']} | {r['images_per_second']:,.0f} | {r.get('gpu_images_per_second', 0):,.0f} | {r['gpu_compute_ms']['median']:.3f} |")
for k in ("mma", "auto"):
    p = f"{out}/single_{k}.json"
    if os.path.exists(p):
        r = json.load(open(p))["results"][0]
        print(f"singlestream {k}: p90 {r['latency_ms']['p90']:.3f} ms, median {r['latency_ms']['median']:.3f} ms")
PY
