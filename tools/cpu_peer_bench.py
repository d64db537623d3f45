#!/usr/bin/python3
"""ResNet-50 v1.5 at 224 x 224 on this machine's CPU: nibble's INT8 and INT4 engines against
PyTorch's FP32 and quantized ResNet-50, in one invocation, with the same threads.

    /usr/bin/python3 tools/cpu_peer_bench.py --nibble build/nibble --threads 2 --batches 1,16 \\
        --json r.json --markdown r.md

The models: torchvision's resnet50 (v1.5) with random weights and BatchNorm statistics measured
on a few random crops of the demo photographs; exported to ONNX (opset 13); nibble calibrates it
(percentile:99.99 on those crops) and quantizes it to int8 and to int4 (first and last layers at
8 bits, as the seed); PyTorch quantizes the same module with FX graph mode and the fbgemm
qconfig of its x86 engine (fbgemm, or oneDNN where the build lacks fbgemm, as Debian's does:
per-channel weights, histogram observers) on the same crops. The seed's own INT4
ResNet-50 (models/mlperf-v0.5-int4-resnet50) runs beside them. Every engine gets random inputs
of its dtype; images/s is batch / median latency of `--duration` seconds of back-to-back runs
after a warm-up (nibble's own `bench`, and the same loop for PyTorch).
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

REPO = pathlib.Path(__file__).resolve().parent.parent
SEED = REPO / "models" / "mlperf-v0.5-int4-resnet50" / "model"


def crops(n, rng):
    sys.path.insert(0, str(REPO / "tools"))
    from coverage import augmented
    return augmented(n, rng)


def build_model(rng):
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    model.train()
    with torch.no_grad():  # BatchNorm statistics of image-like data, so that activations have real ranges
        for _ in range(4):
            model(torch.from_numpy(crops(8, rng)))
    return model.eval()


def time_torch(fn, x, duration, warmup=1.0):
    with torch.inference_mode():
        t0 = time.time()
        while time.time() - t0 < warmup:
            fn(x)
        lat = []
        t0 = time.time()
        while time.time() - t0 < duration or len(lat) < 3:
            a = time.perf_counter()
            fn(x)
            lat.append(time.perf_counter() - a)
    med = float(np.median(lat))
    return {"median_ms": med * 1e3, "images_per_second": x.shape[0] / med, "runs": len(lat)}


def nibble_bench(nibble, model, batch, threads, duration):
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / "r.json"
        subprocess.run([nibble, "bench", str(model), "--device", "cpu", "--threads", str(threads), "--batch", str(batch),
                        "--duration", str(duration), "--iterations", "3", "--json", str(out)], check=True,
                       capture_output=True, text=True)
        r = json.loads(out.read_text())["results"][0]
    med = r["latency_ms"]["median"]
    return {"median_ms": med, "images_per_second": batch / med * 1e3, "runs": r["queries"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nibble", default=str(REPO / "build" / "nibble"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per row")
    ap.add_argument("--work", help="keep the models here (default: a temporary directory)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--markdown")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    work = pathlib.Path(args.work or tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    model = build_model(rng)
    calib = crops(32, rng)
    onnx_path = work / "resnet50.onnx"
    torch.onnx.export(model, torch.from_numpy(calib[:1]), str(onnx_path), opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    np.save(work / "calib.npy", calib)
    nb = args.nibble
    subprocess.run([nb, "calibrate", onnx_path, "--data", work / "calib.npy", "--samples", "0", "--batch", "8",
                    "--method", "percentile:99.99", "--precision", "int4", "-o", work / "r50.calib"], check=True,
                   capture_output=True)
    models = {}
    for p in ("int8", "int4"):
        out = work / f"r50_{p}.nbl"
        if not out.exists():
            subprocess.run([nb, "quantize", onnx_path, "--calib", work / "r50.calib", "--precision", p, "-o", out],
                           check=True, capture_output=True)
        models[p] = out

    # PyTorch's own post-training INT8 (FX graph mode) on its x86 engine: fbgemm where this build
    # has it, else oneDNN (Debian's PyTorch 1.13 has onednn and qnnpack only).
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    engines = torch.backends.quantized.supported_engines
    engine = next(e for e in ("fbgemm", "x86", "onednn", "qnnpack") if e in engines)
    torch.backends.quantized.engine = engine
    prepared = prepare_fx(build_model(np.random.default_rng(0)), get_default_qconfig_mapping(engine),
                          example_inputs=(torch.from_numpy(calib[:1]),))
    with torch.inference_mode():
        for i in range(0, len(calib), 8):
            prepared(torch.from_numpy(calib[i:i + 8]))
    qmodel = convert_fx(prepared)

    rows = []
    for b in batches:
        x = torch.rand(b, 3, 224, 224)
        row = {"batch": b}
        row["pytorch_fp32"] = time_torch(model, x, args.duration)
        row["pytorch_int8"] = time_torch(qmodel, x, args.duration)
        row["nibble_int8"] = nibble_bench(nb, models["int8"], b, args.threads, args.duration)
        row["nibble_int4"] = nibble_bench(nb, models["int4"], b, args.threads, args.duration)
        row["nibble_seed_int4"] = nibble_bench(nb, SEED, b, args.threads, args.duration)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"threads": args.threads, "torch": torch.__version__, "torch_quantized_engine": engine, "cpu": platform_cpu(),
              "rows": rows}
    pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        pathlib.Path(args.markdown).write_text(markdown(result))
    print(markdown(result))


def platform_cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def markdown(result):
    names = [("pytorch_fp32", "PyTorch FP32"), ("pytorch_int8", f"PyTorch INT8 ({result['torch_quantized_engine']})"),
             ("nibble_int8", "nibble INT8 (PTQ of the same export)"), ("nibble_int4", "nibble INT4 (PTQ)"),
             ("nibble_seed_int4", "nibble, the seed's INT4 ResNet-50")]
    lines = [f"images/s, {result['threads']} threads, {result['cpu']}, torch {result['torch']}:", "",
             "| engine | " + " | ".join(f"batch {r['batch']}" for r in result["rows"]) + " |",
             "| --- |" + " ---: |" * len(result["rows"])]
    for key, label in names:
        lines.append(f"| {label} | " + " | ".join(f"{r[key]['images_per_second']:.2f}" for r in result["rows"]) + " |")
    lines += ["", "| ratio | " + " | ".join(f"batch {r['batch']}" for r in result["rows"]) + " |",
              "| --- |" + " ---: |" * len(result["rows"])]
    for a, b, label in [("nibble_int8", "pytorch_int8", "nibble INT8 / PyTorch INT8"),
                        ("nibble_int4", "nibble_int8", "nibble INT4 / nibble INT8"),
                        ("nibble_int8", "pytorch_fp32", "nibble INT8 / PyTorch FP32")]:
        lines.append(f"| {label} | " + " | ".join(
            f"{r[a]['images_per_second'] / r[b]['images_per_second']:.2f}x" for r in result["rows"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
