#!/usr/bin/env bash
# GPTQ on a ResNet-50 v1.5 at 224 x 224 (torchvision's, random weights with BatchNorm statistics
# of the demo photographs, exported to ONNX): calibrate on 64 crops, then quantize with --gptq
# measuring the Hessians on 256 crops. Prints the wall time of each step and the logits'
# cosine against FP32 with and without GPTQ.
#   bench/gptq_resnet50.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
BUILD=${1:-build}
WORK=${2:-$(mktemp -d)}
NIBBLE=$(cd "$BUILD" && pwd)/nibble
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
cd "$WORK"
/usr/bin/python3 - "$HERE" <<'PY' 2>&1 | grep -v -i warn || true
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1] + "/tools")
import coverage as cv
rng = np.random.default_rng(0)
model = cv.build("resnet50", rng)
x = torch.from_numpy(cv.eval_batch())
torch.onnx.export(model, x[:1], "resnet50.onnx", opset_version=13, input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
np.save("calib.npy", cv.augmented(256, rng))
np.save("x.npy", cv.eval_batch())
PY
echo "cores: $(nproc)"
t0=$(date +%s%N)
"$NIBBLE" calibrate resnet50.onnx --data calib.npy --samples 64 --batch 16 --method max -o r50.calib > /dev/null
t1=$(date +%s%N)
rm -rf q_gptq q_nearest
"$NIBBLE" quantize resnet50.onnx --calib r50.calib --gptq --data calib.npy --samples 256 --batch 16 -o q_gptq > /dev/null
t2=$(date +%s%N)
"$NIBBLE" quantize resnet50.onnx --calib r50.calib -o q_nearest > /dev/null
echo "calibrate (64 inputs): $(( (t1 - t0) / 1000000 )) ms"
echo "quantize --gptq (256 inputs): $(( (t2 - t1) / 1000000 )) ms"
"$NIBBLE" run resnet50.onnx -i x.npy -o fp32.npy > /dev/null
for q in q_nearest q_gptq; do "$NIBBLE" run $q -i x.npy -o $q.npy > /dev/null; done
/usr/bin/python3 -c "
import numpy as np
f = np.load('fp32.npy').ravel()
for q in ['q_nearest', 'q_gptq']:
    a = np.load(q + '.npy').ravel()
    print(f'{q}: INT8 logits cosine vs FP32 {a @ f / np.linalg.norm(a) / np.linalg.norm(f):.4f}')"
