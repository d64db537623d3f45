#!/usr/bin/env bash
# Quantization-aware fine-tuning of the committed Fashion-MNIST models on a GPU: the INT8 and INT4
# rows of docs/accuracy.md. For each model: `nibble calibrate --method percentile:99.999` on 1000
# training images, then `python3 -m nibble_qat finetune` at int8 and int4 (and int4 with learned
# ranges, and int4 distilled from the FP32 model; for ResNet-18 also four more int4 settings), all
# runs at once on one GPU. Quantize and evaluate the outputs with tools/accuracy_report.py
# --qat-dir OUT. STEP_MODE: finetune --step-mode (default graphed, steps replayed as CUDA graphs;
# eager with DEVICE=cpu). RUNS: a comma-separated list of run names to do (default: all), such as
# resnet18_int4_lsq_kd_lr01,resnet18_int4_lsq_kd_e30.
#
#   bench/qat_fmnist.sh OUT [DATA_DIR] [NIBBLE]
set -euo pipefail
out=${1:?usage: bench/qat_fmnist.sh OUT [DATA_DIR] [NIBBLE]}
data_dir=${2:-/usr/share/datasets/fashion-mnist}
nibble=${3:-build/nibble}
epochs_int4=${EPOCHS_INT4:-15}
epochs_int8=${EPOCHS_INT8:-5}
device=${DEVICE:-cuda}
step_mode=${STEP_MODE:-graphed}
[ "$device" = cuda ] || step_mode=${STEP_MODE:-eager}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
for m in small resnet18; do
  onnx="$root/models/fmnist_resnet.onnx"
  [ "$m" = resnet18 ] && onnx="$root/models/fmnist_resnet18.onnx"
  "$nibble" calibrate "$onnx" --data fashion-mnist:train --data-dir "$data_dir" --samples 1000 \
    --method percentile:99.999 -o "$out/$m.calib" > "$out/$m.calibrate.log" 2>&1
done
pids=()
run() {  # name onnx calib precision epochs [flags...]
  local name=$1 onnx=$2 cal=$3 prec=$4 epochs=$5
  shift 5
  [ -z "${RUNS:-}" ] || [[ ",$RUNS," == *",$name,"* ]] || return 0
  "$py" -m nibble_qat finetune "$onnx" --calib "$cal" --precision "$prec" --epochs "$epochs" --device "$device" \
    --step-mode "$step_mode" \
    --data-dir "$data_dir" --threads 2 -o "$out/$name" "$@" > "$out/$name.log" 2> "$out/$name.progress" &
  pids+=($!)
}
for m in small resnet18; do
  onnx="$root/models/fmnist_resnet.onnx"
  [ "$m" = resnet18 ] && onnx="$root/models/fmnist_resnet18.onnx"
  run "${m}_int8" "$onnx" "$out/$m.calib" int8 "$epochs_int8"
  run "${m}_int4" "$onnx" "$out/$m.calib" int4 "$epochs_int4"
  run "${m}_int4_lsq" "$onnx" "$out/$m.calib" int4 "$epochs_int4" --learn-ranges
  run "${m}_int4_kd" "$onnx" "$out/$m.calib" int4 "$epochs_int4" --distill 0.5
done
# ResNet-18's INT4 settings beyond the four above: higher learning rates, twice the epochs, the
# loss from the FP32 model's outputs alone (distillation 1), and less weight decay.
r18="$root/models/fmnist_resnet18.onnx"
run resnet18_int4_kd_lr01 "$r18" "$out/resnet18.calib" int4 "$epochs_int4" --distill 0.5 --lr 0.01
run resnet18_int4_kd_lr02 "$r18" "$out/resnet18.calib" int4 "$epochs_int4" --distill 0.5 --lr 0.02
run resnet18_int4_lsq_kd_lr01 "$r18" "$out/resnet18.calib" int4 "$epochs_int4" --learn-ranges --distill 0.5 --lr 0.01
run resnet18_int4_kd_e30 "$r18" "$out/resnet18.calib" int4 $((2 * epochs_int4)) --distill 0.5
run resnet18_int4_lsq_kd_e30 "$r18" "$out/resnet18.calib" int4 $((2 * epochs_int4)) --learn-ranges --distill 0.5 --lr 0.01
run resnet18_int4_lsq_kd10 "$r18" "$out/resnet18.calib" int4 "$epochs_int4" --learn-ranges --distill 1 --lr 0.01
run resnet18_int4_lsq_kd_wd "$r18" "$out/resnet18.calib" int4 "$epochs_int4" --learn-ranges --distill 0.5 --lr 0.01 \
  --weight-decay 5e-5
[ ${#pids[@]} -gt 0 ] || { echo "RUNS=$RUNS: names no run" >&2; exit 2; }
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
tail -n 3 "$out"/*.log
exit $status
