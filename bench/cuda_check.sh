#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the SASS check (tensor-core instructions in the conv kernels),
# the bit-exact GPU tests, and the seed model's benchmark with a per-layer profile, INT8 storage
# against INT4. Logs go to OUT_DIR.
#   bench/cuda_check.sh BIN_DIR SEED_DIR OUT_DIR [BATCH]
# BIN_DIR holds `nibble` and `nibble_tests` (e.g. build and build/tests/cpp of a CUDA build);
# SEED_DIR is the seed model's directory (with model/ and golden/).
set -uo pipefail
BIN=$1 SEED=$2 OUT=$3 BATCH=${4:-256}
mkdir -p "$OUT"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv
  echo "== tensor-core and copy instructions in the binary's SASS"
  cuobjdump --dump-sass "$BIN/nibble" | grep -oE "IMMA\.[A-Z0-9.]+|LDSM\.[A-Z0-9.]+|LDGSTS\.[A-Z0-9.]+|HGMMA\.[A-Z0-9.]+" | sort | uniq -c
} 2>&1 | tee "$OUT/device.txt"
NIBBLE_SEED_DIR="$SEED" "$BIN/nibble_tests" --gtest_filter='Cuda*' 2>&1 | tee "$OUT/gtest.txt" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |OK \]|FAILED|Failure|differ" | head -40
for storage in int8 native; do
  flag=""; [ "$storage" = int8 ] && flag="--int8-storage"
  "$BIN/nibble" bench "$SEED/model" --device cuda --batch "$BATCH" $flag --duration 2 --profile \
    --json "$OUT/bench_$storage.json" > "$OUT/bench_$storage.txt" 2>&1
  grep -E "Throughput|GPU Compute Time|storage|total " "$OUT/bench_$storage.txt"
done
