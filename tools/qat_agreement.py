#!/usr/bin/env python3
"""Engine against PyTorch fake quantization on the Fashion-MNIST test set.

    PYTHONPATH=python python3 tools/qat_agreement.py OUT/model.onnx OUT/model.calib OUT/model.nbl \
        --precision int4 [--device cuda] [--limit N] [--logits N] [--nibble build/nibble] [--json F]

Runs `nibble eval --predictions` on the integer model and nibble_qat's fake-quantized model
(exact mode: float64, bit for bit the engine's arithmetic) on the same images, and reports the
top-1 of each and how many predictions agree. On the first --logits images it also compares the
logits themselves (`nibble run`), in units of the output's quantization step.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import nibble_qat  # noqa: E402
from nibble_qat import data as data_io  # noqa: E402
from nibble_qat import train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx")
    ap.add_argument("calib")
    ap.add_argument("nbl")
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--all-layers", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine-device", default="cpu", help="nibble eval --device (cpu or cuda)")
    ap.add_argument("--limit", type=int, default=0, help="first N test images (0: all 10,000)")
    ap.add_argument("--logits", type=int, default=500, help="compare logits on the first N images")
    ap.add_argument("--data-dir", default=data_io.DEFAULT_DIR)
    ap.add_argument("--nibble", default="build/nibble")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    model = nibble_qat.load(args.onnx, args.calib, args.precision, first_last_8bit=not args.all_layers)
    model.to(args.device)
    images, labels = data_io.load_split(args.data_dir, "test")
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    n = len(images)
    with tempfile.TemporaryDirectory() as tmp:
        pred_path = os.path.join(tmp, "pred.npy")
        subprocess.run([args.nibble, "eval", args.nbl, "--data", "fashion-mnist:test", "--data-dir", args.data_dir,
                        "--limit", str(n), "--device", args.engine_device, "--predictions", pred_path],
                       check=True, stdout=subprocess.DEVNULL)
        engine_pred = np.load(pred_path)
        correct, logits = train.evaluate(model, images, labels, args.device, batch=250, exact=True)
        torch_pred = logits.argmax(1).numpy()
        k = min(args.logits, n)
        x = data_io.to_input(images[:k], model.input_shape[-1], "cpu").numpy()
        np.save(os.path.join(tmp, "x.npy"), x)
        subprocess.run([args.nibble, "run", args.nbl, "-i", os.path.join(tmp, "x.npy"), "-o",
                        os.path.join(tmp, "y.npy")], check=True, stdout=subprocess.DEVNULL)
        engine_logits = np.load(os.path.join(tmp, "y.npy"))
    step = next(iter(model.output_step.values())).numpy()
    diff_steps = np.abs(logits[:k].numpy().astype(np.float64) - engine_logits) / step[None, :]
    agree = int((engine_pred == torch_pred).sum())
    res = {"images": n, "engine_top1": float((engine_pred == labels).mean()), "torch_top1": correct / n,
           "top1_agreement": agree / n, "disagreements": n - agree, "logit_images": k,
           "max_logit_diff_steps": float(diff_steps.max()) if k else 0.0,
           "logits_identical": bool(k and np.array_equal(logits[:k].numpy(), engine_logits))}
    print(f"engine top-1 {100 * res['engine_top1']:.2f}%, PyTorch fake-quant top-1 {100 * res['torch_top1']:.2f}%, "
          f"agreement {agree}/{n} ({100 * agree / n:.2f}%); logits on {k} images: max difference "
          f"{res['max_logit_diff_steps']:.3g} output steps{' (identical)' if res['logits_identical'] else ''}")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
