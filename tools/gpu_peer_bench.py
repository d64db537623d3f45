#!/usr/bin/env python3
"""ResNet-50 v1.5 at 224x224 on one GPU: PyTorch FP16 (eager, CUDA graph, torch.compile
max-autotune) against nibble's INT8 and INT4 engines, in one invocation on the same GPU.

Writes a JSON file with every number and the Markdown tables for docs/performance.md.

  python3 tools/gpu_peer_bench.py --nibble build/nibble --model SEED_MODEL_DIR \\
      --batches 1,64,256,1024 --out results.json --markdown results.md

PyTorch runs torchvision's resnet50 (v1.5: stride on the 3x3 conv) with random weights in FP16,
channels_last, under inference_mode; its images/s are batch / median GPU time of one forward
with the input already on the device. nibble's rows come from `nibble bench --json`: the GPU
compute time of the captured graph (same definition) and the Offline throughput, which also
pays for the host-to-device copies.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time


def torch_rows(batches, modes, iters, deadline, compile_batches):
    import torch
    import torchvision

    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    base = torchvision.models.resnet50(weights=None).eval().to(dev, memory_format=torch.channels_last).half()
    rows = []
    for mode in modes:
        for b in batches:
            row = {"framework": "pytorch", "precision": "fp16", "mode": mode, "batch": b}
            if mode == "compile" and b not in compile_batches:
                row["skipped"] = "not requested (--compile-batches)"
                rows.append(row)
                continue
            if time.time() > deadline:
                row["skipped"] = "time limit of the run reached"
                rows.append(row)
                continue
            x = torch.randn(b, 3, 224, 224, device=dev).half().contiguous(memory_format=torch.channels_last)
            try:
                with torch.inference_mode():
                    if mode == "eager":
                        fn = base
                    elif mode == "cuda_graph":
                        static_x = x.clone()
                        s = torch.cuda.Stream()
                        s.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(s):
                            for _ in range(3):
                                base(static_x)
                        torch.cuda.current_stream().wait_stream(s)
                        g = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(g):
                            static_y = base(static_x)

                        def fn(_x, g=g, static_y=static_y):
                            g.replay()
                            return static_y
                    else:
                        torch._dynamo.reset()
                        fn = torch.compile(base, mode="max-autotune", dynamic=False)
                    t0 = time.time()
                    for _ in range(3):
                        fn(x)
                    torch.cuda.synchronize()
                    row["warmup_s"] = round(time.time() - t0, 1)
                    times = []
                    for _ in range(iters):
                        e0 = torch.cuda.Event(enable_timing=True)
                        e1 = torch.cuda.Event(enable_timing=True)
                        e0.record()
                        fn(x)
                        e1.record()
                        e1.synchronize()
                        times.append(e0.elapsed_time(e1))
                times.sort()
                med = times[len(times) // 2]
                row["median_ms"] = med
                row["images_per_second"] = b / med * 1000.0
            except Exception as e:  # report, keep going
                row["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def nibble_rows(nibble, model, batches, duration):
    """Two runs per storage: one context (the GPU time of one batch alone, as PyTorch is timed)
    and the Offline scenario's default two contexts (throughput with copies overlapped)."""
    rows = []
    for storage in ("int8", "native"):
        res = {}
        for contexts in (1, 2):
            out = f"/tmp/nibble_{storage}_{contexts}.json"
            cmd = [nibble, "bench", model, "--device", "cuda", "--batch", ",".join(map(str, batches)),
                   "--duration", str(duration), "--contexts", str(contexts), "--json", out]
            if storage == "int8":
                cmd.append("--int8-storage")
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                res[contexts] = json.load(f)
        offline = {r["batch"]: r for r in res[2]["results"]}
        for r in res[1]["results"]:
            row = {"framework": "nibble", "precision": "int8" if storage == "int8" else "int4",
                   "mode": "cuda_graph", "batch": r["batch"],
                   "median_ms": r["gpu_compute_ms"]["median"],
                   "images_per_second": r["gpu_images_per_second"],
                   "offline_images_per_second": offline[r["batch"]]["images_per_second"],
                   "device_name": res[1]["device_name"]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(rows, batches, device, command):
    def get(fw, prec, mode, b):
        for r in rows:
            if (r["framework"], r["precision"], r["mode"], r["batch"]) == (fw, prec, mode, b):
                return r
        return None

    def cell(r, key="images_per_second"):
        if r is None:
            return "—"
        if "skipped" in r:
            return "not run"
        return f"{r[key]:,.0f}"

    lines = [f"Device: {device}. Date: {datetime.date.today().isoformat()}.", "", f"Command: `{command}`", "",
             "images/s (GPU time of one batch, input already on the device):", "",
             "| engine | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "| --- | " + " | ".join("---:" for _ in batches) + " |"]
    series = [("PyTorch FP16 eager", "pytorch", "fp16", "eager"),
              ("PyTorch FP16 CUDA graph", "pytorch", "fp16", "cuda_graph"),
              ("PyTorch FP16 torch.compile max-autotune", "pytorch", "fp16", "compile"),
              ("nibble INT8 (seed model, 8-bit storage)", "nibble", "int8", "cuda_graph"),
              ("nibble INT4 (seed model)", "nibble", "int4", "cuda_graph")]
    for name, fw, prec, mode in series:
        lines.append(f"| {name} | " + " | ".join(cell(get(fw, prec, mode, b)) for b in batches) + " |")
    lines.append("| nibble INT8, Offline incl. copies | " +
                 " | ".join(cell(get("nibble", "int8", "cuda_graph", b), "offline_images_per_second") for b in batches) + " |")
    lines.append("| nibble INT4, Offline incl. copies | " +
                 " | ".join(cell(get("nibble", "int4", "cuda_graph", b), "offline_images_per_second") for b in batches) + " |")
    lines += ["", "Ratios (same run, same GPU):", "", "| ratio | " + " | ".join(f"batch {b}" for b in batches) + " |",
              "| --- | " + " | ".join("---:" for _ in batches) + " |"]

    def ratio(a, b):
        if not a or not b or "skipped" in a or "skipped" in b:
            return "—"
        return f"{a['images_per_second'] / b['images_per_second']:.2f}x"

    best_torch = {}
    for b in batches:
        cands = [get("pytorch", "fp16", m, b) for m in ("eager", "cuda_graph", "compile")]
        cands = [c for c in cands if c and "skipped" not in c]
        best_torch[b] = max(cands, key=lambda c: c["images_per_second"]) if cands else None
    lines.append("| INT4 / INT8 (nibble) | " + " | ".join(ratio(get("nibble", "int4", "cuda_graph", b), get("nibble", "int8", "cuda_graph", b)) for b in batches) + " |")
    lines.append("| nibble INT8 / best PyTorch FP16 | " + " | ".join(ratio(get("nibble", "int8", "cuda_graph", b), best_torch[b]) for b in batches) + " |")
    lines.append("| nibble INT4 / best PyTorch FP16 | " + " | ".join(ratio(get("nibble", "int4", "cuda_graph", b), best_torch[b]) for b in batches) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nibble", required=True, help="the nibble binary")
    ap.add_argument("--model", required=True, help="the seed model directory (…/model)")
    ap.add_argument("--batches", default="1,64,256,1024")
    ap.add_argument("--modes", default="eager,cuda_graph,compile", help="PyTorch modes to run")
    ap.add_argument("--iters", type=int, default=30, help="timed PyTorch forwards per row")
    ap.add_argument("--compile-batches", default="256",
                    help="batches to run torch.compile max-autotune at (it tunes for minutes per batch size)")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per nibble batch size")
    ap.add_argument("--time-limit", type=float, default=480,
                    help="seconds from the start after which PyTorch rows not yet started are skipped")
    ap.add_argument("--out", required=True, help="JSON results")
    ap.add_argument("--markdown", help="also write the tables here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    start = time.time()
    rows = nibble_rows(args.nibble, args.model, batches, args.duration)
    device = rows[0]["device_name"] if rows else "?"
    compile_batches = {int(b) for b in args.compile_batches.split(",") if b}
    rows += torch_rows(batches, args.modes.split(","), args.iters, start + args.time_limit, compile_batches)
    command = "python3 tools/gpu_peer_bench.py " + " ".join(sys.argv[1:])
    res = {"device": device, "date": datetime.date.today().isoformat(), "command": command, "rows": rows}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2)
    os.replace(tmp, args.out)
    md = markdown(rows, batches, device, command)
    print(md)
    if args.markdown:
        with open(args.markdown + ".tmp", "w") as f:
            f.write(md)
        os.replace(args.markdown + ".tmp", args.markdown)


if __name__ == "__main__":
    main()
