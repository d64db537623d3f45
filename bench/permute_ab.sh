#!/usr/bin/env bash
# On a Hopper GPU machine: the direct epilogue in the permuted map order (NIBBLE_WGMMA_PERMUTE=1,
# conv_wgmma.cu direct_epilogue_perm) against the plain order, on the seed model, in one run:
# the GPU tests (both orders, bit-exact against the CPU engine), Offline at batch 1024 and 2048
# for both storages in two alternating rounds, per-layer profiles at batch 256, SingleStream, and
# the SASS of the layer1 conv3 kernels (u8, 128-map tiles, two blocks, resident weights) of
# both orders. With a torchvision ResNet-50 export (tools/gpu_fp8_bench.py: PyTorch on the
# machine) also its PTQ INT8 and w4a8-fp8 models, INT8 in both orders.
#   bench/permute_ab.sh CARRY_DIR OUT_DIR
# CARRY_DIR is what bench/pack_device.sh made (bin/, lib/, xz-compressed); run it from the repository root.
set -u
C=$(cd "$1" && pwd) R=$2
mkdir -p "$R"
for f in "$C"/bin/*.xz "$C"/lib/*.xz; do [ -e "$f" ] && xz -d -f "$f"; done
export LD_LIBRARY_PATH="$C/lib:${LD_LIBRARY_PATH:-}" NIBBLE_SOURCE_DIR="$PWD" NIBBLE_SEED_DIR="$PWD/models/mlperf-v0.5-int4-resnet50"
N=$C/bin/nibble S=models/mlperf-v0.5-int4-resnet50/model
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv; } > "$R/device.txt" 2>&1
cuobjdump -sass "$N" > /tmp/permute_ab.sass 2>/dev/null
awk '/Function :/{keep=($0 ~ /conv_wgmma_kernelILi128ELNS0_7StorageE0ELNS1_3EpiE[23]ELi2ELb1/)} keep' /tmp/permute_ab.sass | gzip > "$R/sass_l1conv3.txt.gz"
grep -oE "IGMMA\.[A-Z0-9.x]+|QGMMA\.[A-Z0-9.x]+" /tmp/permute_ab.sass | sort | uniq -c > "$R/sass_mma.txt"
timeout 330 "$C/bin/nibble_tests" --gtest_filter='Cuda*' > "$R/gtest.txt" 2>&1; echo "gtest exit $?" >> "$R/gtest.txt"
bench_round() {
  for perm in 1 0; do
    for st in int8 native; do
      flag=""; [ $st = int8 ] && flag=--int8-storage
      NIBBLE_WGMMA_PERMUTE=$perm timeout 60 "$N" bench $S --device cuda --batch 1024,2048 $flag --duration 1 \
        --json "$R/b$1_p${perm}_$st.json" > "$R/b$1_p${perm}_$st.txt" 2>&1
    done
  done
}
bench_round 1
for perm in 1 0; do
  for st in int8 native; do
    flag=""; [ $st = int8 ] && flag=--int8-storage
    NIBBLE_WGMMA_PERMUTE=$perm timeout 60 "$N" bench $S --device cuda --batch 256 $flag --duration 0.5 --profile > "$R/prof_p${perm}_$st.txt" 2>&1
  done
done
bench_round 2
for perm in 1 0; do
  NIBBLE_WGMMA_PERMUTE=$perm timeout 60 "$N" bench $S --device cuda --scenario singlestream --duration 1 > "$R/single_p$perm.txt" 2>&1
done
W=/tmp/permute_ab_w; mkdir -p $W
NIBBLE_WGMMA_PERMUTE=1 PYTHONUNBUFFERED=1 timeout 170 python3 tools/gpu_fp8_bench.py --nibble "$N" --work $W --batches 1024 --duration 1 \
  --precisions int8,w4a8-fp8 --json "$R/fp8_bench.json" > "$R/fp8_bench.log" 2>&1
for perm in 0 1; do
  [ -f $W/r50_int8.nbl ] && NIBBLE_WGMMA_PERMUTE=$perm timeout 40 "$N" bench $W/r50_int8.nbl --device cuda --batch 1024 --duration 1 > "$R/ptq_int8_p$perm.txt" 2>&1
done
grep -E "PASSED|FAILED|gtest exit|permuted" "$R/gtest.txt" | head
for f in "$R"/b*_*.txt "$R"/ptq_*.txt; do echo "$(basename "$f"): $(grep -E 'images/s' "$f" | sed -E 's/.*qps, ([0-9.]+) images.*/\1/' | tr '\n' ' ')"; done
grep -H "^total" "$R"/prof_*.txt; grep -H "percentile(90" "$R"/single_*.txt
