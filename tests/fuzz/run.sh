#!/usr/bin/env bash
# Runs every fuzz target of a NIBBLE_FUZZ build for SECONDS each, from the committed seed corpus
# (copied, so that the tree stays as it is) with a 2 GB memory limit and a 10 s time limit per
# input. Prints one line per target and exits non-zero if any found a crash, a leak, an
# out-of-memory or a timeout; the offending inputs are left in WORK/<target>/.
#   tests/fuzz/run.sh FUZZ_BUILD_DIR [SECONDS] [WORK] [TARGET...]
set -uo pipefail
BUILD=$1 SECONDS_EACH=${2:-30} WORK=${3:-$(mktemp -d)}
shift $(( $# < 3 ? $# : 3 ))
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(npy idx image image_folder calib_table onnx_import onnx_run qdq_import model_dir)
HERE=$(cd "$(dirname "$0")" && pwd)
status=0
printf "%-13s %10s %8s %6s %s\n" target execs exec/s cov result
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t/corpus" "$WORK/$t/found"
  cp "$HERE/corpus/$t/"* "$WORK/$t/corpus/" 2>/dev/null
  "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$WORK/$t/found/" "$WORK/$t/corpus" > "$WORK/$t/log.txt" 2>&1
  rc=$?
  execs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$WORK/$t/log.txt" | grep -oE "[0-9]+$")
  rate=$(grep -oE "stat::average_exec_per_sec: *[0-9]+" "$WORK/$t/log.txt" | grep -oE "[0-9]+$")
  cov=$(grep -oE "cov: [0-9]+" "$WORK/$t/log.txt" | tail -1 | grep -oE "[0-9]+")
  found=$(ls "$WORK/$t/found" | wc -l)
  if [ $rc -ne 0 ] || [ "$found" -ne 0 ]; then
    status=1
    printf "%-13s %10s %8s %6s %s\n" "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "FAILED (exit $rc): $(ls "$WORK/$t/found" | head -3 | tr '\n' ' ')"
    grep -m3 -E "ERROR|SUMMARY|==[0-9]+==|runtime error" "$WORK/$t/log.txt" | sed 's/^/    /'
  else
    printf "%-13s %10s %8s %6s %s\n" "$t" "$execs" "$rate" "$cov" ok
  fi
done
exit $status
