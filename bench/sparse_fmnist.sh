#!/usr/bin/env bash
# NVIDIA's 2:4 sparse INT8 workflow (the seed's ResNet-34 case) on the Fashion-MNIST ResNets, for
# the sparsity rows of docs/accuracy.md, on a GPU. ResNet-34 (torchvision's basic-block layout,
# stages 3,4,6,3 at width 16) is trained first when models/fmnist_resnet34.onnx is missing (then
# copy it and its .json and test predictions into models/). For each model, one after another
# per model and all models at once:
#   nibble prune --pattern 2:4                                -> OUT/M/pruned.onnx  (2:4 FP32, before fine-tuning)
#   finetune --precision float --sparsity 2:4  (EPOCHS_FP32)  -> OUT/M/fp32/         (2:4 FP32)
#   nibble calibrate --method percentile:99.999 (1000 images) -> OUT/M/fp32.calib    (2:4 INT8 PTQ: quantize fp32/)
#   finetune --precision int8 --sparsity 2:4   (EPOCHS_QAT)   -> OUT/M/qat/          (2:4 INT8 QAT)
# MODELS (default resnet18,resnet34,resnet50), EPOCHS_FP32 (10), EPOCHS_QAT (5), DEVICE (cuda),
# STEP_MODE (finetune --step-mode; default graphed on cuda, eager on cpu), LIMIT_TRAIN and
# MAX_STEPS (finetune's, for a quick check on a CPU).
#   bench/sparse_fmnist.sh OUT [DATA_DIR] [NIBBLE]
set -euo pipefail
out=${1:?usage: bench/sparse_fmnist.sh OUT [DATA_DIR] [NIBBLE]}
data_dir=${2:-/usr/share/datasets/fashion-mnist}
nibble=${3:-build/nibble}
models=${MODELS:-resnet18,resnet34,resnet50}
device=${DEVICE:-cuda}
step_mode=${STEP_MODE:-graphed}
[ "$device" = cuda ] || step_mode=${STEP_MODE:-eager}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
quick=()
[ -z "${LIMIT_TRAIN:-}" ] || quick+=(--limit-train "$LIMIT_TRAIN" --limit-test "$LIMIT_TRAIN")
[ -z "${MAX_STEPS:-}" ] || quick+=(--max-steps "$MAX_STEPS")

onnx_of() {
  case $1 in
    small) echo "$root/models/fmnist_resnet.onnx" ;;
    resnet34)
      if [ -f "$root/models/fmnist_resnet34.onnx" ]; then echo "$root/models/fmnist_resnet34.onnx"; else echo "$out/fmnist_resnet34.onnx"; fi ;;
    *) echo "$root/models/fmnist_$1.onnx" ;;
  esac
}

if [[ ",$models," == *",resnet34,"* && ! -f "$root/models/fmnist_resnet34.onnx" && ! -f "$out/fmnist_resnet34.onnx" ]]; then
  # As fmnist_resnet18.onnx was made (models/README.md): train on the GPU, export with the CPU.
  "$py" "$root/tools/train_fmnist.py" --arch resnet18 --width 16 --blocks 3,4,6,3 --device "$device" --epochs "${EPOCHS_TRAIN:-30}" \
    --batch-size 128 --lr 0.1 --seed 0 --data-dir "$data_dir" --no-export --save-checkpoint "$out/fmnist_resnet34_e30.npz" \
    ${MAX_STEPS:+--max-train-batches "$MAX_STEPS"} > "$out/train_resnet34.log" 2>&1
  "$py" "$root/tools/train_fmnist.py" --from-checkpoint "$out/fmnist_resnet34_e30.npz" --device cpu --data-dir "$data_dir" \
    -o "$out/fmnist_resnet34.onnx" --save-predictions "$out/fmnist_resnet34_test_predictions.npy" \
    ${LIMIT_TRAIN:+--max-test-images "$LIMIT_TRAIN"} >> "$out/train_resnet34.log" 2>&1
fi

workflow() {  # model
  local m=$1 src
  src=$(onnx_of "$m")
  mkdir -p "$out/$m"
  "$nibble" prune "$src" --pattern 2:4 -o "$out/$m/pruned.onnx" > "$out/$m/prune.log" 2>&1
  "$py" -m nibble_qat finetune "$out/$m/pruned.onnx" --precision float --sparsity 2:4 --epochs "${EPOCHS_FP32:-10}" \
    --device "$device" --step-mode "$step_mode" --data-dir "$data_dir" --threads 2 "${quick[@]}" \
    -o "$out/$m/fp32" > "$out/$m/fp32.log" 2> "$out/$m/fp32.progress"
  "$nibble" calibrate "$out/$m/fp32/model.onnx" --data fashion-mnist:train --data-dir "$data_dir" --samples 1000 \
    --method percentile:99.999 --precision int8 -o "$out/$m/fp32.calib" > "$out/$m/calibrate.log" 2>&1
  "$py" -m nibble_qat finetune "$out/$m/fp32/model.onnx" --calib "$out/$m/fp32.calib" --precision int8 --sparsity 2:4 \
    --epochs "${EPOCHS_QAT:-5}" --device "$device" --step-mode "$step_mode" --data-dir "$data_dir" --threads 2 \
    "${quick[@]}" -o "$out/$m/qat" > "$out/$m/qat.log" 2> "$out/$m/qat.progress"
}

pids=()
for m in ${models//,/ }; do
  workflow "$m" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for m in ${models//,/ }; do
  echo "== $m"; tail -n 1 "$out/$m/prune.log" 2>/dev/null || true
  grep -E "^epoch +[0-9]+/" "$out/$m/fp32.log" "$out/$m/qat.log" 2>/dev/null | tail -n 4 || true
done
exit $status
