#!/usr/bin/env python3
"""w4a8-fp8 (FP8 activations x 4-bit weights) against INT8 on the GPU, in one invocation.

    python3 tools/gpu_fp8_bench.py --nibble build/nibble --work DIR [--batches 256,1024,2048] [--json r.json]
                                   [--shortcut-sums]

torchvision's ResNet-50 v1.5 (random weights; BatchNorm statistics of random N(0, 1) batches, as
normalized images have) is exported to ONNX (opset 13), calibrated once by `nibble calibrate`
(max, 32 random images) and quantized by `nibble quantize` to int8, w4a8 (4-bit weights, 8-bit
integer activations) and w4a8-fp8; `nibble bench --device cuda` (Offline, copies included) times
each at every batch, in the same run. Needs PyTorch and torchvision (the GPU machine's Python).
"""
import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np
import torch
import torchvision


def export(work):
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224))
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    path = work / "resnet50.onnx"
    kwargs = dict(opset_version=13, input_names=["input"], output_names=["logits"],
                  dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    try:
        torch.onnx.export(model, x, str(path), dynamo=False, **kwargs)
    except TypeError:  # a PyTorch without the dynamo switch
        torch.onnx.export(model, x, str(path), **kwargs)
    np.save(work / "calib.npy", np.random.default_rng(0).standard_normal((32, 3, 224, 224), dtype=np.float32))
    return path


def run(cmd, log):
    log.write("$ " + " ".join(map(str, cmd)) + "\n")
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    log.write(p.stdout[-4000:] + p.stderr[-4000:])
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr[-2000:]}")
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nibble", default="build/nibble")
    ap.add_argument("--work", required=True, help="directory for the models and logs")
    ap.add_argument("--batches", default="256,1024,2048")
    ap.add_argument("--duration", default="2")
    ap.add_argument("--precisions", default="int8,w4a8,w4a8-fp8")
    ap.add_argument("--json")
    ap.add_argument("--shortcut-sums", action="store_true",
                    help="quantize with --shortcut-sums (shortcut convs hand over 32-bit sums; the default requantizes "
                         "them to 8 bits, as the seed model)")
    args = ap.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "commands.log", "a")
    onnx_path = export(work)
    nb = args.nibble
    run([nb, "calibrate", onnx_path, "--data", work / "calib.npy", "--samples", "0", "--batch", "8", "--method", "max",
         "-o", work / "r50.calib"], log)
    rows = []
    for p in args.precisions.split(","):
        out = work / f"r50_{p}.nbl"
        if not out.exists():
            extra = ["--shortcut-sums"] if args.shortcut_sums else []
            run([nb, "quantize", onnx_path, "--calib", work / "r50.calib", "--precision", p, *extra, "-o", out], log)
        js = work / f"bench_{p}.json"
        run([nb, "bench", out, "--device", "cuda", "--batch", args.batches, "--duration", args.duration, "--json", js], log)
        for r in json.loads(js.read_text())["results"]:
            rows.append({"precision": p, "batch": r["batch"], "images_per_second": r["images_per_second"]})
            print(f"{p:9s} batch {r['batch']:5d} {r['images_per_second']:10,.0f} img/s", flush=True)
    base = {r["batch"]: r["images_per_second"] for r in rows if r["precision"] == "int8"}
    for r in rows:
        if r["batch"] in base:
            r["vs_int8"] = r["images_per_second"] / base[r["batch"]]
    best = {}
    for r in rows:
        best[r["precision"]] = max(best.get(r["precision"], 0.0), r["images_per_second"])
    for p, v in best.items():
        print(f"best {p:9s} {v:10,.0f} img/s  {v / best['int8']:.3f}x int8" if "int8" in best else f"best {p} {v:,.0f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "best": best}, indent=1))


if __name__ == "__main__":
    main()
