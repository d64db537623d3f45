#!/usr/bin/env python3
"""Architecture coverage: export torchvision CNNs to ONNX, run them with nibble in FP32 against
PyTorch, quantize them to INT8 and compare with FP32, and write the table of docs/coverage.md.

The weights are random (torchvision's initialisation, fixed seed) with BatchNorm statistics
recomputed on augmented crops of the demo photographs, so that activations have the ranges a
trained network's have. Inputs are those photographs (resize the shorter side to 256, centre
crop 224, ImageNet mean and standard deviation).

  /usr/bin/python3 tools/coverage.py --nibble build/nibble [--models a,b] [--work DIR] [-o docs/coverage.md]

With -o, a page that holds the two marker comments keeps its text and gets the new table
between them; any other path receives the table alone.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent
MODELS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "googlenet", "squeezenet1_1",
          "densenet121", "shufflenet_v2_x1_0", "mnasnet0_5", "mobilenet_v3_small", "convnext_tiny", "vit_b_16"]
BEGIN, END = "<!-- coverage table: tools/coverage.py -->", "<!-- end of coverage table -->"
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def preprocess(img, size=224, resize=256):
    w, h = img.size
    s = resize / min(w, h)
    img = img.convert("RGB").resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255.0
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return x.transpose(2, 0, 1)


def photos():
    return [Image.open(p) for p in sorted((REPO / "data" / "images").iterdir())]


def eval_batch():
    return np.stack([preprocess(im) for im in photos()])


def augmented(n, rng):
    """n random crops (scale 0.3-1, flips) of the photographs, preprocessed."""
    out, ims = [], photos()
    for i in range(n):
        im = ims[i % len(ims)].convert("RGB")
        w, h = im.size
        s = rng.uniform(0.3, 1.0)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        c = im.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            c = c.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(preprocess(c, 224, 224))
    return np.stack(out)


def build(name, rng):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    # A zero-initialised classifier (ViT's head) would give all-zero logits: draw it instead.
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.02)
    # BatchNorm statistics of the data: a cumulative average over augmented crops.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(torch.from_numpy(augmented(16, rng)))
    model.eval()
    return model


def nibble(args, *cmd, timeout=3600):
    t = time.time()
    p = subprocess.run([args.nibble, *map(str, cmd)], capture_output=True, text=True, timeout=timeout)
    return p, time.time() - t


def first_error(p):
    lines = (p.stderr or p.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {p.returncode}"


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def survey(name, args, work):
    rng = np.random.default_rng(0)
    row = {"model": name}
    model = build(name, rng)
    x = eval_batch()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    onnx_path = work / f"{name}.onnx"
    torch.onnx.export(model, torch.from_numpy(x[:1]), str(onnx_path), opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    np.save(work / "x.npy", x)
    p, sec = nibble(args, "run", onnx_path, "-i", work / "x.npy", "-o", work / f"{name}_fp32.npy")
    if p.returncode != 0:
        row["fp32"] = first_error(p)
        return row
    out = np.load(work / f"{name}_fp32.npy")
    row["fp32_rel"] = float(np.abs(out - ref).max() / np.abs(ref).max())
    row["fp32_s"] = sec
    calib = augmented(args.calib, rng)
    np.save(work / "calib.npy", calib)
    if args.peer:
        row["peer_cos"] = pytorch_int8_cosine(model, x, calib, ref)
    table = work / f"{name}.calib"
    p, _ = nibble(args, "calibrate", onnx_path, "--data", work / "calib.npy", "--samples", 0, "--batch", 8,
                  "--method", args.method, "-o", table)
    if p.returncode != 0:
        row["int8"] = first_error(p)
        return row
    row["input8_cos"] = rounded_input_cosine(model, x, ref, table)
    qdir = work / f"{name}_int8"
    subprocess.run(["rm", "-rf", str(qdir)])
    p, _ = nibble(args, "quantize", onnx_path, "--calib", table, "-o", qdir)
    if p.returncode != 0:
        row["int8"] = first_error(p)
        return row
    row["layers"] = quantize_counts(p.stdout)
    p, _ = nibble(args, "run", qdir, "-i", work / "x.npy", "-o", work / f"{name}_int8.npy")
    if p.returncode != 0:
        row["int8"] = first_error(p)
        return row
    row["int8_cos"] = cosine(np.load(work / f"{name}_int8.npy"), out)
    return row


def rounded_input_cosine(model, x, ref, table):
    """PyTorch's FP32 output for the input rounded to the 8-bit grid nibble quantizes it to (its
    calibrated range over 127 levels a side), as a cosine against the exact input's: no INT8 model
    with an 8-bit input can be expected above it. A network that loses more than a rounding's worth
    here amplifies small input changes (random weights can; a trained network does not)."""
    top = None
    for line in pathlib.Path(table).read_text().splitlines():
        f = line.split()
        if len(f) == 4 and f[0] == "input":
            top = max(abs(float(f[2])), abs(float(f[3])))
    if top is None:
        return None
    step = top / 127
    xr = np.clip(np.round(x / step), -127, 127) * step
    with torch.no_grad():
        return cosine(model(torch.from_numpy(xr.astype(np.float32))).numpy(), ref)


def pytorch_int8_cosine(model, x, calib, ref):
    """The peer: PyTorch's own post-training INT8 (FX graph mode, fbgemm: per-channel weights,
    histogram-calibrated activations) on the same model and calibration crops."""
    import copy
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    try:
        prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("fbgemm"),
                              example_inputs=(torch.from_numpy(x[:1]),))
        with torch.no_grad():
            for i in range(0, len(calib), 8):
                prepared(torch.from_numpy(calib[i:i + 8]))
            out = convert_fx(prepared)(torch.from_numpy(x)).numpy()
        return cosine(out, ref)
    except Exception as e:  # a model FX cannot trace has no peer number
        return f"FX cannot trace it ({type(e).__name__})"


def quantize_counts(stdout):
    """(integer layers, float layers) from quantize's per-layer report."""
    integer = sum(1 for l in stdout.splitlines() if l.strip().endswith(("int8", "int4", "w4a8", "w4a8-fp8")))
    floating = sum(1 for l in stdout.splitlines() if " float" in l)
    return [integer, floating]


def table(rows):
    out = ["| model | FP32 max diff vs PyTorch (relative) | FP32, input rounded to 8 bits: cosine | INT8 cosine vs FP32 | "
           "PyTorch INT8 (fbgemm) cosine | conv/linear layers integer / float |", "|---|---|---|---|---|---|"]
    for r in rows:
        fp32 = f"{r['fp32_rel']:.1e}" if "fp32_rel" in r else f"fails: {r.get('fp32', '')}"
        int8 = f"{r['int8_cos']:.4f}" if "int8_cos" in r else ("—" if "fp32_rel" not in r else f"fails: {r.get('int8', '')}")
        layers = "{} / {}".format(*r["layers"]) if "layers" in r else "—"
        peer = r.get("peer_cos", "—")
        peer = f"{peer:.4f}" if isinstance(peer, float) else peer
        floor = f"{r['input8_cos']:.4f}" if isinstance(r.get("input8_cos"), float) else "—"
        out.append(f"| {r['model']} | {fp32} | {floor} | {int8} | {peer} | {layers} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nibble", default=str(REPO / "build" / "nibble"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", type=int, default=32, help="calibration crops")
    ap.add_argument("--method", default="mse",
                    help="nibble calibrate --method for the INT8 column (default mse: the squared error of each "
                         "activation's quantization, as the peer's histogram observers minimize)")
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="skip PyTorch's own INT8 quantization")
    ap.add_argument("--work", help="keep the exported models here (default: a temporary directory)")
    ap.add_argument("-o", "--output", help="write the table here (markdown), else print it")
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="nibble-coverage-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        t = time.time()
        try:
            row = survey(name, args, work)
        except Exception as e:  # an export failure is a row, not the end of the survey
            row = {"model": name, "fp32": f"export: {str(e).splitlines()[0]}"}
        rows.append(row)
        print(f"{name}: {json.dumps(row)} ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    text = table(rows)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.output:
        # A page holding the markers keeps its text; only the table between them is replaced.
        out = pathlib.Path(args.output)
        page = out.read_text() if out.exists() else ""
        if BEGIN in page and END in page:
            text = page[:page.index(BEGIN) + len(BEGIN)] + "\n" + text + page[page.index(END):]
        tmp = pathlib.Path(args.output + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
