#!/usr/bin/env bash
# Engine against nibble_qat on a GPU: for every DIR/NAME.onnx with DIR/NAME.calib, `nibble quantize
# --precision int4`, then tools/qat_agreement.py with the fake-quantized model on CUDA (exact mode)
# and `nibble eval --device cuda`: top-1 of each, agreement on the test set, logits on 500 images.
#
#   bench/qat_agreement.sh DIR [DATA_DIR] [NIBBLE]      (LIMIT_<NAME>=N limits a model's images)
set -u
dir=${1:?usage: bench/qat_agreement.sh DIR [DATA_DIR] [NIBBLE]}
data_dir=${2:-/usr/share/datasets/fashion-mnist}
nibble=${3:-build/nibble}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for onnx in "$dir"/*.onnx; do
  m=$(basename "$onnx" .onnx)
  limit_var="LIMIT_$m"
  "$nibble" quantize "$onnx" --calib "$dir/$m.calib" --precision int4 -o "$tmp/$m.nbl" > /dev/null || {
    echo "$m: quantize failed"; continue; }
  echo "$m: $(python3 "$root/tools/qat_agreement.py" "$onnx" "$dir/$m.calib" "$tmp/$m.nbl" --device cuda \
    --engine-device cuda --limit "${!limit_var:-0}" --logits 500 --data-dir "$data_dir" --nibble "$nibble" 2>&1 | tail -n 1)"
done
