#!/usr/bin/env bash
# On a Hopper GPU machine: the wgmma kernels' variants (direct epilogue with one or two blocks per
# multiprocessor, prefetch, staged) tested bit-exact against the CPU engine; the seed model
# profiled per layer with `auto` for both storages (and with one block per multiprocessor);
# Nsight Compute on layer1_0_conv2 and layer1_0_conv3; Offline (batch 256 and 2048) and
# SingleStream with `auto`. Run from the repository root; CARRY_DIR is what
# bench/pack_device.sh made.
#   bench/epilogue_check.sh CARRY_DIR OUT_DIR
set -uo pipefail
C=$(cd "$1" && pwd) OUT=$2
mkdir -p "$OUT"
for f in "$C"/bin/*.xz "$C"/lib/*.xz; do [ -e "$f" ] && xz -d -f "$f"; done  # pack_device.sh compresses them
export LD_LIBRARY_PATH="$C/lib:${LD_LIBRARY_PATH:-}" NIBBLE_SOURCE_DIR="$(pwd)" NIBBLE_SEED_DIR="$(pwd)/models/mlperf-v0.5-int4-resnet50"
N="$C/bin/nibble"
M="$NIBBLE_SEED_DIR/model"
timeout 300 "$C/bin/nibble_tests" --gtest_filter='Cuda*' > "$OUT/gtest_default.txt" 2>&1
echo "gtest exit $?" >> "$OUT/gtest_default.txt"
for v in NIBBLE_WGMMA_EPILOGUE=prefetch NIBBLE_WGMMA_EPILOGUE=staged NIBBLE_WGMMA_CTAS=1; do
  env "$v" timeout 200 "$C/bin/nibble_tests" \
    --gtest_filter='CudaEngine.ConvKernel*:CudaEngine.Narrow*:CudaEngine.SeedModel*' > "$OUT/gtest_${v#*=}.txt" 2>&1
  echo "gtest exit $?" >> "$OUT/gtest_${v#*=}.txt"
done
for f in "$OUT"/gtest_*.txt; do echo "== $f"; grep -E "^\[  (PASSED|FAILED) |Failure|differ|gtest exit|engines:" "$f" | head -8; done
profile() {  # NAME STORAGE_FLAG [ENV]
  env ${3:-NIBBLE_NONE=} timeout 120 "$N" bench "$M" --device cuda --batch 256 $2 --kernels auto --duration 0.5 \
    --profile --profile-runs 10 > "$OUT/profile_$1.txt" 2>&1
}
profile int8 --int8-storage
profile native ""
profile int8-one-block --int8-storage NIBBLE_WGMMA_CTAS=1
for f in "$OUT"/profile_*.txt; do echo "== $f"; grep -E "^Throughput|conv1 |maxpool|layer1_0|layer2_0|layer2_1|layer3_1|layer4_1|^total" "$f" | awk '{print $1, $2, $3, $4}'; done
# Launch order with --kernels wgmma (every conv but the stem): 2 = layer1_0_conv2, 3 = layer1_0_conv3.
for skip in 2 3; do
  timeout 150 ncu --clock-control none --kernel-name regex:conv_wgmma --launch-skip $skip --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section LaunchStats \
    --section Occupancy --section InstructionStats "$N" bench "$M" --device cuda --batch 256 \
    --int8-storage --kernels wgmma --duration 0.1 --contexts 1 > "$OUT/ncu_wgmma_$skip.txt" 2>&1
done
for f in "$OUT"/ncu_*.txt; do echo "== $f"; grep -E "Duration|Memory Throughput|Issued Warp|Eligible Warps|Achieved Active Warps|Executed Instructions  " "$f" | head -8; done
for storage in int8 native; do
  flag=""; [ "$storage" = int8 ] && flag="--int8-storage"
  timeout 120 "$N" bench "$M" --device cuda --batch 256,2048 $flag --kernels auto --duration 1 \
    --json "$OUT/offline_$storage.json" > "$OUT/offline_$storage.txt" 2>&1
  echo "== offline $storage"; grep -E "^Throughput|GPU Compute Time" "$OUT/offline_$storage.txt" | cut -c1-90
done
timeout 60 "$N" bench "$M" --device cuda --scenario singlestream --kernels auto --duration 1 \
  --json "$OUT/single_auto.json" > "$OUT/single_auto.txt" 2>&1
grep -E "^Latency" "$OUT/single_auto.txt" | head -1 | cut -c1-200
