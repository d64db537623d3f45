#!/usr/bin/env python3
"""Time nibble_qat training steps (and, with --compile, the same steps through torch.compile).

    PYTHONPATH=python python3 tools/qat_step_time.py MODEL.onnx X.calib [--precision int4]
        [--batch-size 64] [--steps 20] [--warmup 3] [--device cuda] [--learn-ranges] [--compile]
        [--json F]

Each variant builds a fresh fake-quantized model, runs --warmup steps (for the compiled one this
includes compiling), then --steps timed steps (forward, backward, SGD) on the same random batch,
synchronizing the device before and after. Prints milliseconds per step and images per second,
and with --compile the eager/compiled ratio and the compiler's most frequent graph breaks.
bench/qat_resnet50.sh uses the eager figure to fit its fine-tuning into a time budget.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import nibble_qat  # noqa: E402
from nibble_qat import train  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(args, compiled):
    device = train.training_device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = nibble_qat.load(args.onnx, args.calib, args.precision, learn_ranges=args.learn_ranges).to(device)
    step_model = torch.compile(model, dynamic=False) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.rand((args.batch_size,) + model.input_shape, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def step():
        loss = F.cross_entropy(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.clamp_thresholds()

    t0 = time.time()
    for _ in range(args.warmup):
        step()
    _sync(device)
    warm = time.time() - t0
    t0 = time.time()
    for _ in range(args.steps):
        step()
    _sync(device)
    secs = time.time() - t0
    ms = 1000 * secs / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    row = {"compiled": compiled, "warmup_seconds": round(warm, 2), "ms_per_step": round(ms, 2),
           "images_per_second": round(args.batch_size * args.steps / secs, 1),
           "peak_gib": round(peak, 2) if peak is not None else None}
    if compiled:
        from torch._dynamo.utils import counters
        breaks = sorted(counters["graph_break"].items(), key=lambda kv: -kv[1])[:8]
        counters.clear()
        # The same weights through both paths: how far compiling moves the training forward pass
        # (with gradients on, as in training, so that the compiled graph is reused).
        a, b = model(x).detach().float(), step_model(x).detach().float()
        row.update({"max_logit_difference_vs_eager": float((a - b).abs().max()),
                    "top1_agreement_vs_eager": float((a.argmax(1) == b.argmax(1)).float().mean()),
                    "graph_breaks": {str(k)[:300]: v for k, v in breaks}})
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx")
    ap.add_argument("calib")
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--learn-ranges", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time the steps through torch.compile (PyTorch 2)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.compile and not hasattr(torch, "compile"):
        ap.error(f"--compile needs PyTorch 2; this is {torch.__version__}")
    rows = [time_steps(args, False)]
    if args.compile:
        try:
            rows.append(time_steps(args, True))
        except Exception as e:  # noqa: BLE001 -- report the compiler's failure, keep the eager row
            rows.append({"compiled": True, "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"compiled: failed: {rows[-1]['error']}")
    for r in rows:
        if "error" in r:
            continue
        print(f"{'compiled' if r['compiled'] else 'eager':8s}  {r['ms_per_step']:8.1f} ms/step  "
              f"{r['images_per_second']:8.1f} images/s  (warm-up {r['warmup_seconds']} s, peak {r['peak_gib']} GiB)"
              + (f"; logits vs eager: max |diff| {r['max_logit_difference_vs_eager']:.3g}, top-1 agreement "
                 f"{100 * r['top1_agreement_vs_eager']:.1f}%" if r["compiled"] else ""))
    for k, v in rows[-1].get("graph_breaks", {}).items():
        print(f"graph break x{v}: {k}")
    if len(rows) == 2 and "error" not in rows[1]:
        print(f"compiled speed-up: {rows[0]['ms_per_step'] / rows[1]['ms_per_step']:.2f}x")
    info = {"onnx": args.onnx, "precision": args.precision, "batch_size": args.batch_size, "steps": args.steps,
            "learn_ranges": args.learn_ranges, "device": args.device, "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
