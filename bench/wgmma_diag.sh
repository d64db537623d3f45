#!/usr/bin/env bash
# On a Hopper GPU machine: the seed model's per-layer profile with the wgmma kernels' prefetch and
# staged epilogues and with `auto`, and Nsight Compute's view (speed of light, warp states,
# scheduler, memory, the SASS lines warps stall on) of layer1_0_conv3, the 1x1 expand with a
# residual, on each family. Run from the repository root.
#   bench/wgmma_diag.sh CARRY_DIR OUT_DIR
set -uo pipefail
C=$(cd "$1" && pwd) OUT=$2
mkdir -p "$OUT"
for f in "$C"/bin/*.xz "$C"/lib/*.xz; do [ -e "$f" ] && xz -d -f "$f"; done  # pack_device.sh compresses them
export LD_LIBRARY_PATH="$C/lib:${LD_LIBRARY_PATH:-}"
N="$C/bin/nibble"
M="$NIBBLE_SEED_DIR/model"
run_profile() {  # NAME KERNELS [ENV=VALUE]
  env ${3:-} timeout 120 "$N" bench "$M" --device cuda --batch 256 --int8-storage --duration 0.5 \
    --kernels "$2" --profile --profile-runs 10 > "$OUT/profile_$1.txt" 2>&1
}
run_profile wgmma_prefetch wgmma
run_profile wgmma_staged wgmma NIBBLE_WGMMA_EPILOGUE=staged
run_profile auto auto
# Launch order when the graph is first captured: with --kernels wgmma every conv but the stem is a
# wgmma kernel (3 = layer1_0_conv3); with --kernels mma every conv is (4 = layer1_0_conv3).
run_ncu() {  # NAME KERNELS REGEX SKIP
  timeout 150 ncu --clock-control none --kernel-name "regex:$3" --launch-skip "$4" --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section LaunchStats \
    --section Occupancy --section MemoryWorkloadAnalysis --section SourceCounters \
    "$N" bench "$M" --device cuda --batch 256 --int8-storage --kernels "$2" --duration 0.1 --contexts 1 \
    > "$OUT/ncu_$1.txt" 2>&1
}
run_ncu wgmma_conv3 wgmma conv_wgmma 3
run_ncu mma_conv3 mma conv_igemm 4
for f in "$OUT"/profile_*.txt; do echo "== $f"; grep -E "layer1_0|layer2_1|layer3_1|layer4_1|total" "$f" | awk '{print $1, $2, $3}' | head -20; done
for f in "$OUT"/ncu_*.txt; do echo "== $f"; grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|Issued Warp|No Eligible|Warp Cycles Per Issued|Registers Per|Achieved Occupancy|Stall" "$f" | head -16; done
