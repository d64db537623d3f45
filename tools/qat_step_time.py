#!/usr/bin/env python3
"""Time nibble_qat training steps, one row per way of running them.

    PYTHONPATH=python python3 tools/qat_step_time.py MODEL.onnx X.calib [--precision int4]
        [--batch-size 64] [--steps 20] [--warmup 3] [--device cuda] [--learn-ranges] [--distill D]
        [--variants unfused,fused,compiled,graphed] [--json F]

Variants: `unfused` runs every step after a convolution as its own PyTorch operation, `fused`
runs them as one autograd node (arith.conv_epilogue) eagerly, `compiled` compiles that node's
forward and backward with torch.compile (finetune --step-mode compiled), `graphed` also
replays each step's forward and backward as one CUDA graph (finetune --step-mode graphed),
`graphed-eager-teacher` is graphed with the distillation teacher run eagerly (to measure what
the teacher's graph saves), and `model-compile` compiles the whole model's step (slow: kept as a
measurement). The default is unfused,fused,compiled,graphed on CUDA and unfused,fused on the CPU.

Each variant builds a fresh fake-quantized model, runs --warmup steps (including any compiling),
then --steps timed steps (forward, backward, SGD) on the same random batch, synchronizing the
device before and after. With --distill D each step's loss also takes the FP32 model's logits
(finetune --distill D; the teacher's forward pass is replayed as a CUDA graph in the graphed
variant, as finetune does). Every variant is compared with the first one on the same weights: the
largest logit difference and the largest gradient difference relative to the largest gradient.
Prints milliseconds per step, images per second and the speed-up over the first variant.
bench/qat_resnet50.sh uses the figure of the variant fine-tuning runs to fit its fine-tuning
into a time budget.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import nibble_qat  # noqa: E402
from nibble_qat import arith, train  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _variant(name, model, example):
    """Sets up `model` for variant `name`; returns the callable a step runs."""
    model.fused = name != "unfused"
    arith.KERNELS.failed = False
    if name == "model-compile":
        arith.KERNELS.compile = False
        return torch.compile(model, dynamic=False)
    mode = {"unfused": "eager", "fused": "eager", "graphed-eager-teacher": "graphed"}.get(name, name)
    return train.step_function(model, mode, example)


def _teacher(ref, name, example):
    """The distillation teacher's callable for variant `name` (None without --distill): the FP32
    model loaded once by _reference, graphed as finetune graphs it in the graphed variant."""
    if ref["teacher"] is None:
        return None
    return train.teacher_function(ref["teacher"], "graphed" if name == "graphed" else "eager", example)


def _reference(args, device):
    """The random batch every variant steps on, and the logits and gradients of one step of the
    first variant on it, from the seeded initial weights."""
    torch.manual_seed(0)
    model = nibble_qat.load(args.onnx, args.calib, args.precision, learn_ranges=args.learn_ranges).to(device)
    torch.manual_seed(1)
    ref = {"x": torch.rand((args.batch_size,) + model.input_shape, device=device),
           "y": torch.randint(0, 10, (args.batch_size,), device=device),
           "teacher": (nibble_qat.load(args.onnx, args.calib, "float").to(device).eval().requires_grad_(False)
                       if args.distill else None)}
    name = args.variants[0]
    run = _variant(name, model, ref["x"])
    ref["logits"], ref["grads"] = _one_step(run, _teacher(ref, name, ref["x"]), args.distill, model,
                                            ref["x"], ref["y"])
    return ref


def _one_step(run, teacher, distill, model, x, y):
    model.zero_grad(set_to_none=True)
    logits, _ = train.forward_backward(run, teacher, distill, x, y)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach().float().clone(), grads  # a graphed step overwrites its output tensor


def time_steps(args, name, ref):
    device = train.training_device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = nibble_qat.load(args.onnx, args.calib, args.precision, learn_ranges=args.learn_ranges).to(device)
    run = _variant(name, model, ref["x"])
    x, y = ref["x"], ref["y"]
    t0 = time.time()
    teacher = _teacher(ref, name, x)
    logits, grads = _one_step(run, teacher, args.distill, model, x, y)  # the first step (and any compiling)
    diff = {"max_logit_difference": float((logits - ref["logits"]).abs().max()),
            "top1_agreement": float((logits.argmax(1) == ref["logits"].argmax(1)).float().mean()),
            "max_relative_grad_difference": max(
                (float((g - ref["grads"][k]).abs().max() / ref["grads"][k].abs().max().clamp(min=1e-30))
                 for k, g in grads.items()), default=0.0),
            "same_parameters_with_gradients": sorted(grads) == sorted(ref["grads"])}
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        train.forward_backward(run, teacher, args.distill, x, y)
        opt.step()
        model.clamp_thresholds()

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
    row = {"variant": name, "warmup_seconds": round(warm, 2), "ms_per_step": round(ms, 2),
           "images_per_second": round(args.batch_size * args.steps / secs, 1),
           "peak_gib": round(peak, 2) if peak is not None else None, "compile_failed": arith.KERNELS.failed}
    row.update(diff)
    if name == "model-compile":
        from torch._dynamo.utils import counters
        breaks = sorted(counters["graph_break"].items(), key=lambda kv: -kv[1])[:8]
        counters.clear()
        row["graph_breaks"] = {str(k)[:300]: v for k, v in breaks}
    return row


VARIANTS = ("unfused", "fused", "compiled", "graphed", "graphed-eager-teacher", "model-compile")


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
    ap.add_argument("--distill", type=float, default=0.0,
                    help="distillation weight of the loss (finetune --distill; default 0: cross-entropy only)")
    ap.add_argument("--variants", default="",
                    help="comma-separated, from " + ", ".join(VARIANTS) + " (default: unfused,fused,compiled,graphed on "
                         "CUDA, unfused,fused on the CPU); the first is the reference of the comparisons")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if not 0.0 <= args.distill <= 1.0:
        ap.error(f"--distill must be between 0 and 1, got {args.distill}")
    cuda = args.device.startswith("cuda")
    args.variants = [v for v in (args.variants or ("unfused,fused,compiled,graphed" if cuda else "unfused,fused")).split(",") if v]
    for v in args.variants:
        if v not in VARIANTS:
            ap.error(f"--variants: unknown variant '{v}' (choose from {', '.join(VARIANTS)})")
        if v not in ("unfused", "fused") and not hasattr(torch, "compile"):
            ap.error(f"--variants {v} needs PyTorch 2; this is {torch.__version__}")
    ref = _reference(args, train.training_device(args.device))
    rows = []
    for v in args.variants:
        try:
            rows.append(time_steps(args, v, ref))
        except Exception as e:  # noqa: BLE001 -- report a variant's failure, keep the others
            rows.append({"variant": v, "error": f"{type(e).__name__}: {e}"[:2000]})
            print(f"{v}: failed: {rows[-1]['error']}")
    base = rows[0].get("ms_per_step")
    for r in rows:
        if "error" in r:
            continue
        print(f"{r['variant']:13s} {r['ms_per_step']:8.1f} ms/step {r['images_per_second']:8.1f} images/s"
              + (f"  {base / r['ms_per_step']:5.2f}x" if base else "")
              + f"  (warm-up {r['warmup_seconds']} s, peak {r['peak_gib']} GiB; vs {rows[0]['variant']}: logits "
                f"{r['max_logit_difference']:.3g}, top-1 {100 * r['top1_agreement']:.1f}%, gradients "
                f"{r['max_relative_grad_difference']:.3g}{'' if r['same_parameters_with_gradients'] else ', OTHER PARAMETERS'})"
              + (" COMPILE FAILED, ran eagerly" if r["compile_failed"] else ""))
        for k, v in r.get("graph_breaks", {}).items():
            print(f"  graph break x{v}: {k}")
    info = {"onnx": args.onnx, "precision": args.precision, "batch_size": args.batch_size, "steps": args.steps,
            "learn_ranges": args.learn_ranges, "distill": args.distill, "device": args.device, "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name() if cuda else "cpu", "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
