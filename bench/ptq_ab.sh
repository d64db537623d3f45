#!/usr/bin/env bash
# Two nibble binaries' PTQ of the same models from the same calibration tables: which layer files
# differ and the top-1 of each on Fashion-MNIST's 10,000 test images.
#
#   bash bench/ptq_ab.sh OLD_NIBBLE NEW_NIBBLE [MODELS] [PRECISIONS] [METHOD]
#
# MODELS: names under models/ without .onnx (default fmnist_resnet,fmnist_resnet18,fmnist_resnet50);
# PRECISIONS default int8,w4a8; METHOD (the calibrator) default percentile:99.999. Tables come from
# NEW_NIBBLE; the work directory is $WORK (default /tmp/nibble-ptq-ab).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; fi
OLD=$1; NEW=$2
MODELS=${3:-fmnist_resnet,fmnist_resnet18,fmnist_resnet50}
PRECISIONS=${4:-int8,w4a8}
METHOD=${5:-percentile:99.999}
W=${WORK:-/tmp/nibble-ptq-ab}
mkdir -p "$W"
cd "$(dirname "$0")/.."
top1() { "$1" eval "$2" 2>&1 | grep -o "top-1: [0-9.]*% ([0-9/]*)" || echo "no top-1"; }
for m in ${MODELS//,/ }; do
  for p in ${PRECISIONS//,/ }; do
    "$NEW" calibrate "models/$m.onnx" --method "$METHOD" --precision "$p" -o "$W/$m.$p.calib" > /dev/null
    "$OLD" quantize "models/$m.onnx" --calib "$W/$m.$p.calib" --precision "$p" -o "$W/$m.$p.old.nbl" > /dev/null
    "$NEW" quantize "models/$m.onnx" --calib "$W/$m.$p.calib" --precision "$p" -o "$W/$m.$p.new.nbl" > /dev/null
    differ=$(diff -rq "$W/$m.$p.old.nbl" "$W/$m.$p.new.nbl" | wc -l || true)
    echo "$m $p $METHOD: files that differ $differ; old $(top1 "$OLD" "$W/$m.$p.old.nbl"); new $(top1 "$NEW" "$W/$m.$p.new.nbl")"
  done
done
