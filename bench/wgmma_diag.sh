#!/usr/bin/env bash
# On a Hopper GPU machine: the seed model's per-layer profile with the wgmma kernels' prefetch and
# staged epilogues, and Nsight Compute's view of two layers in each mode (layer1_0_conv3, the
# 1x1 expand with residual; layer3_1_conv2, a 3x3). Run from the repository root.
#   bench/wgmma_diag.sh CARRY_DIR OUT_DIR
set -uo pipefail
C=$(cd "$1" && pwd) OUT=$2
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$C/lib:${LD_LIBRARY_PATH:-}"
N="$C/bin/nibble"
for mode in prefetch staged; do
  NIBBLE_WGMMA_EPILOGUE=$mode timeout 120 "$N" bench "$C/seed/model" --device cuda --batch 256 --int8-storage --duration 0.5 \
    --kernels wgmma --profile --profile-runs 10 > "$OUT/profile_$mode.txt" 2>&1
  # Launch order of the wgmma kernels (--kernels wgmma: every conv but the stem) when the graph is
  # first run: 3 = layer1_0_conv3, 28 = layer3_1_conv2.
  for skip in 3 28; do
    NIBBLE_WGMMA_EPILOGUE=$mode timeout 150 ncu --clock-control none --kernel-name regex:conv_wgmma --launch-skip $skip \
      --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section LaunchStats \
      --section MemoryWorkloadAnalysis "$N" bench "$C/seed/model" --device cuda --batch 256 --int8-storage \
      --kernels wgmma --duration 0.1 --contexts 1 > "$OUT/ncu_${mode}_$skip.txt" 2>&1
  done
done
for f in "$OUT"/profile_*.txt; do echo "== $f"; grep -E "conv3|conv2|downsample|total" "$f" | awk '{print $1, $2, $3}' | head -20; done
for f in "$OUT"/ncu_*.txt; do echo "== $f"; grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Issued Warp|No Eligible|Stall|Warp Cycles Per Issued|Registers|Achieved Occupancy" "$f" | head -14; done
