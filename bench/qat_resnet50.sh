#!/usr/bin/env bash
# ResNet-50 v1.5 (224 x 224 input, torchvision widths) on Fashion-MNIST, INT4, in one scripted run
# on a GPU: train FP32, calibrate (percentile:99.999), quantize without training (PTQ), fine-tune
# with nibble_qat (QAT), quantize, and evaluate both integer models with the CUDA engine; then
# compare the engine with the PyTorch fake-quantized model. Every stage writes into WORK and is
# skipped when its output is there, so a second invocation continues an interrupted run
# (fine-tuning resumes from its checkpoint).
#
#   bench/qat_resnet50.sh WORK [DATA_DIR] [NIBBLE]
# Environment: EPOCHS_FP32 (4), EPOCHS_QAT (2, or auto:SECONDS for as many epochs as the measured
# step time fits into SECONDS, at most 15), QAT_BATCH (64), CALIB_SAMPLES (500), AGREE_LIMIT (2000),
# QAT_FLAGS (more nibble_qat finetune options, e.g. --learn-ranges --distill 0.5), STEP_MODE (finetune
# --step-mode: graphed (default), compiled, eager, or auto: the faster of compiled and graphed as
# measured), STEP_TIME (1: time training steps beside the calibration with tools/qat_step_time.py;
# needed by auto:SECONDS and STEP_MODE=auto), CHECK_STEPS (0: N fine-tunes N steps eagerly and in the
# step mode, from the same start on the same batches, before the long fine-tune; the script stops
# when the step mode's training loss is more than CHECK_TOLERANCE (0.1) above the eager one, relative),
# QAT_NAME (qat_int4: the fine-tune's directory in WORK; a second invocation on the same WORK with
# another name and QAT_FLAGS fine-tunes another setting from the same FP32 model and table, and can
# run beside the first once WORK/ptq_int4.eval exists).
set -euo pipefail
work=${1:?usage: bench/qat_resnet50.sh WORK [DATA_DIR] [NIBBLE]}
data_dir=${2:-/usr/share/datasets/fashion-mnist}
nibble=${3:-build/nibble}
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
mkdir -p "$work"
log="$work/run.log"
stage() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$log"; }

if [ ! -f "$work/fp32.onnx" ]; then
  stage "train FP32"
  "$py" "$root/tools/train_fmnist.py" --arch resnet50 --input-size 224 --amp --device cuda --eval-device cuda \
    --epochs "${EPOCHS_FP32:-4}" --batch-size 128 --lr 0.1 --seed 0 --threads 8 --data-dir "$data_dir" \
    -o "$work/fp32.onnx" 2>&1 | grep -v "^ *$" | tail -n 12 | tee -a "$log"
fi
if [ "${STEP_TIME:-0}" = 1 ] && [ ! -f "$work/step_time.json" ]; then
  stage "time training steps (beside the calibration)"
  # The steps as the fine-tune will run them: learned ranges and distillation as in QAT_FLAGS.
  st_flags=()
  variants=unfused,fused,compiled,graphed
  if [[ " ${QAT_FLAGS:-} " =~ [[:space:]]--distill[[:space:]=]+([0-9.]+) ]]; then
    st_flags+=(--distill "${BASH_REMATCH[1]}")
    variants+=,graphed-eager-teacher  # what the teacher's CUDA graph saves
  fi
  [[ " ${QAT_FLAGS:-} " == *" --learn-ranges "* ]] && st_flags+=(--learn-ranges)
  ( "$nibble" calibrate "$work/fp32.onnx" --data fashion-mnist:train --data-dir "$data_dir" --samples 8 \
      --method percentile:99.999 -o "$work/quick.calib" > /dev/null 2>&1 &&
    "$py" "$root/tools/qat_step_time.py" "$work/fp32.onnx" "$work/quick.calib" --batch-size "${QAT_BATCH:-64}" \
      --steps 10 --variants "$variants" "${st_flags[@]}" --json "$work/step_time.json" \
      > "$work/step_time.txt" 2>&1 ) &
  timing=$!
fi
if [ ! -f "$work/fp32.calib" ]; then
  stage "calibrate"
  "$nibble" calibrate "$work/fp32.onnx" --data fashion-mnist:train --data-dir "$data_dir" \
    --samples "${CALIB_SAMPLES:-500}" --method percentile:99.999 -o "$work/fp32.calib" 2>&1 | tail -n 1 | tee -a "$log"
fi
if [ -n "${timing:-}" ]; then
  wait "$timing" || true
  grep -v "^ *$" "$work/step_time.txt" | tail -n 12 | tee -a "$log"
fi
epochs=${EPOCHS_QAT:-2}
mode=${STEP_MODE:-graphed}
if [[ $epochs == auto:* || $mode == auto ]]; then
  if [ ! -f "$work/qat_plan" ]; then
    "$py" - "$work/step_time.json" "$epochs" "$mode" > "$work/qat_plan" <<'PY'
import json, sys
timing = json.load(open(sys.argv[1]))
ok = {r["variant"]: r for r in timing["rows"]
      if "error" not in r and not r["compile_failed"] and r["same_parameters_with_gradients"]
      and r["top1_agreement"] >= 0.99}
mode = sys.argv[3]
if mode == "auto":  # the faster of the two modes that measured well
    mode = min((v for v in ("compiled", "graphed") if v in ok), key=lambda v: ok[v]["ms_per_step"], default="eager")
row = ok.get(mode if mode != "eager" else "fused") or ok.get("fused") or ok.get("unfused")
if row is None:
    sys.exit(f"{sys.argv[1]}: no step timing to plan with")
epoch = row["ms_per_step"] * (60000 // timing["batch_size"]) / 1000 * 1.2 + 15  # 20% slack, and the test evaluation
epochs = sys.argv[2]
if epochs.startswith("auto:"):  # as many as fit into the seconds given
    epochs = max(1, min(15, int(float(epochs[5:]) // epoch)))
print(epochs, mode)
PY
  fi
  read -r epochs mode < "$work/qat_plan"
  stage "fine-tuning plan (EPOCHS_QAT=${EPOCHS_QAT:-2}, STEP_MODE=${STEP_MODE:-graphed}): $epochs epochs, step mode $mode"
fi
# quantize_and_eval NAME ONNX CALIB: NAME.nbl and its top-1 on the CUDA engine (NAME.eval).
quantize_and_eval() {
  local name=$1 onnx=$2 cal=$3
  if [ ! -d "$work/$name.nbl" ]; then
    stage "quantize $name"
    "$nibble" quantize "$onnx" --calib "$cal" --precision int4 -o "$work/$name.nbl" 2>&1 | tail -n 1 | tee -a "$log"
  fi
  if [ ! -f "$work/$name.eval" ]; then
    stage "evaluate $name (CUDA engine)"
    "$nibble" eval "$work/$name.nbl" --device cuda --batch 250 --data fashion-mnist:test --data-dir "$data_dir" \
      > "$work/$name.eval.tmp" 2>/dev/null && mv "$work/$name.eval.tmp" "$work/$name.eval"
    tee -a "$log" < "$work/$name.eval"
  fi
}
check=${CHECK_STEPS:-0}
if [ "$check" -gt 0 ] && [ "$mode" != eager ] && [ ! -f "$work/check_ok" ]; then
  stage "check: $check steps eagerly and $mode, from the same start"
  for m in eager "$mode"; do
    rm -rf "$work/check_$m"
    "$py" -m nibble_qat finetune "$work/fp32.onnx" --calib "$work/fp32.calib" --precision int4 --epochs 1 \
      --max-steps "$check" --limit-test 500 --batch-size "${QAT_BATCH:-64}" --step-mode "$m" --device cuda --threads 8 \
      --data-dir "$data_dir" -o "$work/check_$m" ${QAT_FLAGS:-} 2> /dev/null | grep "^epoch  1" | tee -a "$log"
  done
  "$py" - "$work/check_eager/finetune.json" "$work/check_$mode/finetune.json" "${CHECK_TOLERANCE:-0.1}" <<'PY' | tee -a "$log"
import json, sys
eager, fast = (json.load(open(f))["history"][-1]["train_loss"] for f in sys.argv[1:3])
tol = float(sys.argv[3])
ok = fast <= eager * (1 + tol)
print(f"check: training loss {fast:.4f} in the step mode against {eager:.4f} eagerly: "
      + ("same learning" if ok else f"more than {100 * tol:g}% above; stopping (STEP_MODE=eager learns as intended)"))
sys.exit(0 if ok else 1)
PY
  touch "$work/check_ok"
fi
quantize_and_eval ptq_int4 "$work/fp32.onnx" "$work/fp32.calib"
qat=${QAT_NAME:-qat_int4}
agreement="$work/agreement.json"
[ "$qat" = qat_int4 ] || agreement="$work/$qat.agreement.json"
if [ ! -f "$work/$qat/done" ]; then
  stage "fine-tune INT4 (nibble_qat) into $qat"
  resume=()
  [ -f "$work/$qat/checkpoint.pt" ] && resume=(--resume)
  "$py" -m nibble_qat finetune "$work/fp32.onnx" --calib "$work/fp32.calib" --precision int4 \
    --epochs "$epochs" --batch-size "${QAT_BATCH:-64}" --step-mode "$mode" --device cuda --threads 8 --data-dir "$data_dir" \
    -o "$work/$qat" ${QAT_FLAGS:-} "${resume[@]}" 2> "$work/$qat.progress" | tee -a "$log"
  touch "$work/$qat/done"
fi
quantize_and_eval "$qat" "$work/$qat/model.onnx" "$work/$qat/model.calib"
if [ ! -f "$agreement" ]; then
  stage "engine against PyTorch fake quantization ($qat)"
  "$py" "$root/tools/qat_agreement.py" "$work/$qat/model.onnx" "$work/$qat/model.calib" \
    "$work/$qat.nbl" --precision int4 --device cuda --engine-device cuda --limit "${AGREE_LIMIT:-2000}" \
    --logits 100 --data-dir "$data_dir" --nibble "$nibble" --json "$agreement" | tee -a "$log"
fi
stage "done"
