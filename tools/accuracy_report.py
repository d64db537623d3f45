#!/usr/bin/python3
"""Measure quantization accuracy and write docs/accuracy.md and docs/accuracy.png.

Every number in the report comes from the nibble commands this script runs:

    nibble eval MODEL.onnx                                    FP32 top-1
    nibble calibrate MODEL.onnx --method M --precision P      one table per method (and bits)
    nibble quantize MODEL.onnx --calib T --precision P [--gptq | --dpq]
    nibble eval OUT.nbl                                       quantized top-1
    nibble compare MODEL.onnx OUT.nbl --sensitivity --auto-mixed --max-drop D

With --qat-dir DIR it also quantizes and evaluates the outputs of quantization-aware
fine-tuning (bench/qat_fmnist.sh DIR): DIR/<model>_<precision>[_<setting>]/model.onnx and
model.calib go through `nibble quantize` (same precision, nearest rounding) and `nibble eval`, as
QAT rows beside the PTQ ones. The ResNet-50 224 x 224 GPU run (bench/qat_resnet50.sh) is read from
the saved outputs in --r50-results.

Run from the repository root after `make build` (about 15 minutes on 2 cores):

    /usr/bin/python3 tools/accuracy_report.py

Model size is the bytes of the model's tensors: the FP32 ONNX initializers, and for a model
directory the files under npdata/ (weights, biases, requantization factors, scales).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    "small": ("models/fmnist_resnet.onnx", "Small ResNet (basic blocks 1,1,2; 16-64 channels)"),
    "resnet18": ("models/fmnist_resnet18.onnx", "ResNet-18-style (torchvision layout, 16-128 channels)"),
    "resnet50": ("models/fmnist_resnet50.onnx", "ResNet-50 v1.5-style (bottlenecks 3,4,6,3; 64-512 channels)"),
    "vit": ("models/fmnist_vit.onnx", "ViT-style transformer (4x4 patches, 4 blocks of width 64; token projections "
            "as 1x1 convs, attention in float)"),
}
METHODS = ["max", "percentile:99.99", "percentile:99.999", "entropy", "mse"]
PRECISIONS = ["int8", "w4a8", "int4"]


def run(cmd, log):
    """Runs a command, appends it and its output to the log, returns stdout."""
    log.write("$ " + " ".join(shlex.quote(str(c)) for c in cmd) + "\n")
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    log.write(proc.stdout)
    log.write(proc.stderr)
    log.flush()
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stderr}")
    return proc.stdout


def top1(stdout):
    m = re.search(r"top-1: ([\d.]+)% \((\d+)/(\d+)\)", stdout)
    if not m:
        sys.exit("no top-1 in output:\n" + stdout)
    return int(m.group(2)), int(m.group(3))


def onnx_weight_bytes(path):
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer)


def dir_tensor_bytes(path):
    return sum(f.stat().st_size for f in (Path(path) / "npdata").iterdir())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nibble", default=str(REPO / "build" / "nibble"), help="nibble binary (default: build/nibble)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ",".join(MODELS))
    p.add_argument("--calib-samples", type=int, default=1000, help="calibration inputs (default: %(default)s)")
    p.add_argument("--eval-limit", type=int, default=0, help="test images for top-1 (0: all 10,000)")
    p.add_argument("--sweep-limit", type=int, default=1000,
                   help="test images for the sensitivity sweep and auto-mixed choice (default: %(default)s)")
    p.add_argument("--max-drop", type=float, default=0.5, help="auto-mixed budget in points (default: %(default)s)")
    p.add_argument("--workdir", default=str(REPO / "build" / "accuracy"), help="scratch directory (replaced)")
    p.add_argument("--out", default=str(REPO / "docs" / "accuracy.md"))
    p.add_argument("--plot", default=str(REPO / "docs" / "accuracy.png"))
    p.add_argument("--qat-dir", default="", help="outputs of bench/qat_fmnist.sh to add as QAT rows")
    p.add_argument("--qat-logs", default="docs/results/h200-2026-11-29-qat,docs/results/h200-2026-11-29b-qat",
                   help="comma-separated directories where the logs of the --qat-dir runs are kept, for the "
                        "report (default: %(default)s)")
    p.add_argument("--r50-results", default="docs/results/h200-2026-11-30-qat,docs/results/h200-2026-11-30b-qat,"
                   "docs/results/h200-2026-11-29b-qat,docs/results/h200-2026-11-29c-qat",
                   help="comma-separated directories of saved bench/qat_resnet50.sh outputs (resnet50-224.*) for "
                        "the ResNet-50 224 section: the first is described in detail, every one gets a row "
                        "(default: %(default)s)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the work directory and take each model's results from an earlier run's "
                        "<workdir>/<model>.json where present (an interrupted run goes on where it stopped)")
    p.add_argument("--fp8-only", action="store_true",
                   help="measure only the w4a8-fp8 rows (max calibration; nearest, GPTQ and DPQ, and DPQ's "
                        "group size and order) and put them into the existing --out in place of its w4a8-fp8 rows")
    args = p.parse_args()
    if args.fp8_only:
        fp8_only(args)
        return

    nibble = args.nibble
    if not Path(nibble).exists():
        sys.exit(f"{nibble} not found: run `make build` first")
    work = Path(args.workdir)
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "commands.log", "a")
    limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
    results = {}
    for key in args.models.split(","):
        onnx_rel, title = MODELS[key]
        model = REPO / onnx_rel
        saved = work / f"{key}.json"
        if args.reuse and saved.exists():
            results[key] = json.loads(saved.read_text())
            results[key]["reused"] = True
            print(f"== {key}: results of an earlier run in {saved}", flush=True)
            continue
        print(f"== {key}: {onnx_rel}", flush=True)
        model_started = time.time()
        fp_ok, n = top1(run([nibble, "eval", model, *limit], log))
        rows = []
        tables = {}
        for method in METHODS:
            # entropy and mse depend on the activation width; max and percentile do not.
            for bits_prec in (["int8", "int4"] if method in ("entropy", "mse") else ["int8"]):
                path = work / f"{key}_{method.replace(':', '_')}_{bits_prec}.calib"
                run([nibble, "calibrate", model, "--samples", args.calib_samples, "--method", method,
                     "--precision", bits_prec, "-o", path], log)
                tables[(method, bits_prec)] = path
        def measure(prec, method, rounding):
            """rounding: nearest, gptq (--gptq) or dpq (--dpq, w4a8-fp8 only)."""
            act = "int4" if prec == "int4" else "int8"
            calib = tables.get((method, act), tables[(method, "int8")])
            out = work / f"{key}_{prec}_{method.replace(':', '_')}{'' if rounding == 'nearest' else '_' + rounding}.nbl"
            extra = [] if rounding == "nearest" else [f"--{rounding}", "--samples", str(min(args.calib_samples, 256))]
            run([nibble, "quantize", model, "--calib", calib, "--precision", prec, *extra, "-o", out], log)
            ok, _ = top1(run([nibble, "eval", out, *limit], log))
            rows.append({"precision": prec, "method": method, "rounding": rounding,
                         "correct": ok, "n": n, "bytes": dir_tensor_bytes(out)})
            print(f"   {prec:8s} {method:18s} {rounding:8s} {100 * ok / n:6.2f}%", flush=True)
            return ok

        # Every calibrator with plain rounding; GPTQ on the 4-bit precisions with their best calibrator.
        for prec in PRECISIONS:
            scores = {method: measure(prec, method, "nearest") for method in METHODS}
            if prec != "int8":
                measure(prec, max(METHODS, key=lambda m: scores[m]), "gptq")
        for rounding in ("nearest", "gptq", "dpq"):
            measure("w4a8-fp8", "max", rounding)
        # Mixed precision: the best INT4 rows' calibrator, layers chosen by the sweep.
        best4 = max((r for r in rows if r["precision"] == "int4"), key=lambda r: r["correct"])
        calib = tables.get((best4["method"], "int4"), tables[(best4["method"], "int8")])
        gflag = ["--gptq"] if best4["rounding"] == "gptq" else []
        base = work / f"{key}_mixed_base.nbl"
        run([nibble, "quantize", model, "--calib", calib, "--precision", "int8", "--all-layers", *gflag,
             "-o", base], log)
        layers_file = work / f"{key}_mixed.layers"
        sweep = run([nibble, "compare", model, base, "--limit", str(args.sweep_limit), "--sensitivity",
                     "--auto-mixed", "--max-drop", str(args.max_drop), "--calib", calib, *gflag,
                     "--write-layers", layers_file], log)
        layer_list = layers_file.read_text().strip()
        mixed = work / f"{key}_mixed.nbl"
        lp = ["--layer-precision", layer_list] if layer_list else []
        run([nibble, "quantize", model, "--calib", calib, "--precision", "int8", "--all-layers", *gflag, *lp,
             "-o", mixed], log)
        ok, _ = top1(run([nibble, "eval", mixed, *limit], log))
        n_int4 = layer_list.count(":int4")
        n_layers = len(re.findall(r"^\S+\s+[\d.]+\s+-?[\d.]+$", sweep.split("sensitivity:")[1], re.M))
        rows.append({"precision": f"int4 mixed ({n_int4}/{n_layers} layers)", "method": best4["method"],
                     "rounding": best4["rounding"], "correct": ok, "n": n, "bytes": dir_tensor_bytes(mixed)})
        print(f"   mixed {n_int4}/{n_layers} int4 layers: {100 * ok / n:.2f}%", flush=True)
        results[key] = {"title": title, "onnx": onnx_rel, "fp32_correct": fp_ok, "n": n,
                        "fp32_bytes": onnx_weight_bytes(model), "rows": rows, "mixed_layers": layer_list,
                        "seconds": time.time() - model_started}
        saved.write_text(json.dumps(results[key], indent=1))
    if args.qat_dir:
        for key in args.models.split(","):
            if key in results:
                qat_rows(args, key, results[key], work, log, limit)
    # Time of every model's measurements, including those taken by an earlier run (--reuse).
    elapsed = sum(r.get("seconds", 0.0) for r in results.values())
    write_report(args, results, elapsed)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} and {args.plot} ({elapsed / 60:.1f} min of measurements)")


FP8_VARIANTS = [("nearest", []), ("gptq", ["--gptq"]), ("dpq", ["--dpq"]), ("dpq, groups of 64", ["--dpq", "--group-size", "64"]),
                ("dpq, groups of 128", ["--dpq", "--group-size", "128"]), ("dpq, stored order", ["--dpq", "--no-gar"])]


def fp8_only(args):
    """The w4a8-fp8 rows of every model, measured afresh, written into the report in place of the old ones."""
    nibble = args.nibble
    if not Path(nibble).exists():
        sys.exit(f"{nibble} not found: run `make build` first")
    report = Path(args.out)
    text = report.read_text()
    work = Path(args.workdir) / "fp8"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = open(work / "commands.log", "a")
    limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
    started = time.time()
    section = ["<!-- w4a8-fp8 rows: tools/accuracy_report.py --fp8-only -->", "",
               "## W4A8 with FP8 compute: nearest, GPTQ and DPQ", "",
               f"Measured by `/usr/bin/python3 tools/accuracy_report.py --fp8-only` on {datetime.date.today()} "
               f"(commit {git_commit()}, {platform.machine()}, {os.cpu_count()} cores): `nibble calibrate --method max` on the first "
               f"{args.calib_samples} training images, `nibble quantize --precision w4a8-fp8` with the rounding shown "
               f"(Hessians on the first {min(args.calib_samples, 256)}), top-1 on "
               f"{'all 10,000' if not args.eval_limit else f'the first {args.eval_limit}'} test images. DPQ's group "
               "scales are stored as f32, one per 32 (64, 128) weights, hence its larger size.", "",
               "| model | rounding | top-1 % | drop (points) | vs GPTQ (points) | size (bytes) |",
               "| --- | --- | ---: | ---: | ---: | ---: |"]
    for key in args.models.split(","):
        onnx_rel, _ = MODELS[key]
        model = REPO / onnx_rel
        fp_ok, n = top1(run([nibble, "eval", model, *limit], log))
        fp = 100 * fp_ok / n
        calib = work / f"{key}_max.calib"
        run([nibble, "calibrate", model, "--samples", args.calib_samples, "--method", "max", "--precision", "int8",
             "-o", calib], log)
        rows = []
        fp32_line = re.search(rf"^\| {key} \| fp32 \| ([\d.]+) \| \| ([\d,]+) \|", text, re.M)
        if not fp32_line:
            # A model the full report has not measured yet: its summary lines begin with FP32, int8
            # and w4a8 (max calibration; w4a8 nearest and GPTQ, the better one).
            fp32_bytes = onnx_weight_bytes(model)
            lines = [f"| {key} | fp32 | {fp:.2f} | | {fp32_bytes:,} | 1.00 | | |"]
            for prec, variants in (("int8", [("nearest", [])]), ("w4a8", [("nearest", []), ("gptq", ["--gptq"])])):
                best = None
                for name, flags in variants:
                    out = work / f"{key}_{prec}_{name}.nbl"
                    extra = [*flags, "--samples", str(min(args.calib_samples, 256))] if flags else []
                    run([nibble, "quantize", model, "--calib", calib, "--precision", prec, *extra, "-o", out], log)
                    ok, _ = top1(run([nibble, "eval", out, *limit], log))
                    print(f"   {key} {prec} {name:20s} {100 * ok / n:6.2f}%", flush=True)
                    if best is None or ok > best[1]:
                        best = (name, ok, dir_tensor_bytes(out))
                acc = 100 * best[1] / n
                lines.append(f"| {key} | {prec} | {acc:.2f} | {fp - acc:.2f} | {best[2]:,} | {best[2] / fp32_bytes:.2f} | max | {best[0]} |")
            lines.append(f"| {key} | w4a8-fp8 | |")  # replaced below
            table_end = text.index("\n\nTargets:")
            text = text[:table_end] + "\n" + "\n".join(lines) + text[table_end:]
        for name, flags in FP8_VARIANTS:
            out = work / f"{key}_{re.sub('[^a-z0-9]+', '_', name)}.nbl"
            extra = [*flags, "--samples", str(min(args.calib_samples, 256))] if flags else []
            run([nibble, "quantize", model, "--calib", calib, "--precision", "w4a8-fp8", *extra, "-o", out], log)
            ok, _ = top1(run([nibble, "eval", out, *limit], log))
            rows.append((name, 100 * ok / n, dir_tensor_bytes(out)))
            print(f"   {key} w4a8-fp8 {name:20s} {100 * ok / n:6.2f}%", flush=True)
        gptq = rows[1][1]
        for name, acc, size in rows:
            section.append(f"| {key} | {name} | {acc:.2f} | {fp - acc:.2f} | {acc - gptq:+.2f} | {size:,} |")
        # The summary's w4a8-fp8 line: the best of nearest, GPTQ and DPQ (default settings).
        name, acc, size = max(rows[:3], key=lambda r: r[1])
        fp32_line = re.search(rf"^\| {key} \| fp32 \| ([\d.]+) \| \| ([\d,]+) \|", text, re.M)
        if not fp32_line or abs(float(fp32_line.group(1)) - round(fp, 2)) > 1e-9:
            sys.exit(f"{report}: the FP32 row of {key} is missing or differs from this run's {fp:.2f}")
        fp32_bytes = int(fp32_line.group(2).replace(",", ""))
        line = f"| {key} | w4a8-fp8 | {acc:.2f} | {fp - acc:.2f} | {size:,} | {size / fp32_bytes:.2f} | max | {name} |"
        text, count = re.subn(rf"^\| {key} \| w4a8-fp8 \|.*$", line, text, flags=re.M)
        if count != 1:
            sys.exit(f"{report}: no single w4a8-fp8 summary line for {key}")
    # Rows of models not measured this time stay as they were (before this run's rows).
    measured = set(args.models.split(","))
    old = re.search(r"<!-- w4a8-fp8 rows:.*?<!-- end of w4a8-fp8 rows -->", text, flags=re.S)
    kept = [line for line in (old.group(0).splitlines() if old else [])
            if re.match(r"^\| (?!---)(\S+) \| (?!rounding)", line) and line.split(" | ")[0][2:] not in measured]
    header = section.index("| --- | --- | ---: | ---: | ---: | ---: |") + 1
    section[header:header] = kept
    note = "" if not kept else " Rows of other models: an earlier run (its date and commit are in the git history of this file)."
    section += ["", f"{(time.time() - started) / 60:.1f} min of measurements.{note}", "", "<!-- end of w4a8-fp8 rows -->"]
    block = "\n".join(section)
    if "<!-- w4a8-fp8 rows:" in text:
        text = re.sub(r"<!-- w4a8-fp8 rows:.*?<!-- end of w4a8-fp8 rows -->", lambda _: block, text, flags=re.S)
    else:
        anchor = text.index("![top-1 against model size]")
        text = text[:anchor] + block + "\n\n" + text[anchor:]
    tmp = report.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(report)
    print(f"wrote the w4a8-fp8 rows into {report}")


def qat_rows(args, key, r, work, log, limit):
    """QAT rows of one model from --qat-dir (measured afresh, also with --reuse)."""
    r["rows"] = [row for row in r["rows"] if "QAT" not in row["precision"]]
    started = time.time()
    for prec in ("int8", "int4"):
        # KEY_PREC, then KEY_PREC_<setting> in name order (bench/qat_fmnist.sh's runs).
        base = Path(args.qat_dir) / f"{key}_{prec}"
        for run_dir in [base] + sorted(Path(args.qat_dir).glob(f"{key}_{prec}_*")):
            suffix = run_dir.name[len(base.name):]
            if not (run_dir / "model.onnx").exists():
                continue
            hist = json.loads((run_dir / "finetune.json").read_text())
            epochs = hist["history"][-1]["epoch"]
            settings = hist.get("settings") or {}
            lsq = bool(settings.get("learn_ranges"))
            out = work / f"{key}_{prec}_qat{suffix}.nbl"
            shutil.rmtree(out, ignore_errors=True)
            run([args.nibble, "quantize", run_dir / "model.onnx", "--calib", run_dir / "model.calib",
                 "--precision", prec, "-o", out], log)
            ok, n = top1(run([args.nibble, "eval", out, *limit], log))
            method = f"percentile:99.999, {'learned (LSQ)' if lsq else 'fixed'} ranges"
            if settings.get("distill"):
                method += f", distillation {settings['distill']:g} from FP32"
            if settings.get("lr"):
                method += f", lr {settings['lr']:g}"
            if settings.get("weight_decay", 5e-4) != 5e-4:
                method += f", weight decay {settings['weight_decay']:g}"
            r["rows"].append({"precision": f"{prec} QAT", "method": method, "rounding": f"QAT, {epochs} epochs",
                              "correct": ok, "n": n, "bytes": dir_tensor_bytes(out)})
            print(f"   {prec} QAT {suffix.lstrip('_') or 'fixed'}: {100 * ok / n:.2f}%", flush=True)
    r["seconds"] = r.get("seconds", 0.0) + time.time() - started


def best_per_precision(rows):
    """The most accurate row of each precision (all mixed-precision rows count as one)."""
    best = {}
    for row in rows:
        g = "int4 mixed" if row["precision"].startswith("int4 mixed") else row["precision"]
        if g not in best or row["correct"] > best[g]["correct"]:
            best[g] = row
    return best


def git_commit():
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip() or "unknown"


def write_report(args, results, elapsed):
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cmd = "/usr/bin/python3 tools/accuracy_report.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    L = []
    L.append("# Accuracy of quantization (post-training and quantization-aware)")
    L.append("")
    L.append("Generated by `tools/accuracy_report.py` from real runs of the nibble commands; do not edit by hand.")
    L.append("")
    L.append(f"- Command: `{cmd.strip()}`")
    L.append(f"- Date: {datetime.date.today().isoformat()}, commit {git_commit()}, "
             f"{platform.machine()} ({cpu}, {os.cpu_count()} cores), {elapsed / 60:.1f} min")
    reused = [k for k, r in results.items() if r.get("reused")]
    if reused:
        L.append(f"- {', '.join(reused)}: measured by an earlier run of this script (same commands) and read back "
                 f"from its saved results (`--reuse`); the time above includes that run's measurements.")
    L.append(f"- Data: Fashion-MNIST; calibration on the first {args.calib_samples} training images "
             f"(GPTQ Hessians on the first {min(args.calib_samples, 256)}); top-1 on "
             f"{'all 10,000' if not args.eval_limit else f'the first {args.eval_limit}'} test images.")
    L.append("- Precisions: int8 = 8-bit weights and activations; w4a8 = 4-bit weights, 8-bit integer "
             "activations; w4a8-fp8 = 4-bit integer weights, FP8 (e4m3) activations and FP8 x INT4 products "
             "(the Dual Precision Quantization scheme); int4 = 4-bit weights and activations. As in the seed model, the first convolution and the last "
             "linear layer stay at 8 bits in w4a8 and int4. Weights are symmetric per output channel, "
             "activations per tensor (unsigned after ReLU).")
    L.append("- Rounding: `nearest` rounds each weight; `gptq` is `nibble quantize --gptq` (Hessian-guided "
             "error compensation); `dpq` is `nibble quantize --dpq` (Dual Precision Quantization, w4a8-fp8 only: "
             "levels in groups of 32 inputs with FP8 group scales and one power-of-two scale per tensor, rounded "
             "through INT4 then FP8 inside GPTQ's compensation, group-aware column order; docs/quantization.md).")
    L.append("- Size: bytes of tensors (FP32: ONNX initializers; quantized: the model directory's npdata/).")
    if args.qat_dir:
        L.append(f"- QAT rows: `python3 -m nibble_qat finetune` (docs/qat.md) from a `percentile:99.999` table on the "
                 f"first 1000 training images, SGD with a cosine schedule, run on a GPU by `bench/qat_fmnist.sh` "
                 f"(logs in {' and '.join(d.rstrip('/') + '/' for d in args.qat_logs.split(','))}, whose READMEs "
                 f"give the device and the command); its FP32 ONNX and table "
                 f"were then quantized (`nibble quantize`, nearest rounding) and evaluated here by this script.")
    L.append("")
    L.append("## Summary: the best of each precision")
    L.append("")
    L.append("The best calibrator and rounding per precision, chosen on the test set itself (so slightly "
             "optimistic); the `max` + `nearest` row of the full table is the untuned default.")
    L.append("")
    L.append("| model | precision | top-1 % | drop (points) | size (bytes) | size vs FP32 | calibrator | rounding |")
    L.append("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    for key, r in results.items():
        n = r["n"]
        fp = 100 * r["fp32_correct"] / n
        L.append(f"| {key} | fp32 | {fp:.2f} | | {r['fp32_bytes']:,} | 1.00 | | |")
        groups = best_per_precision(r["rows"])
        for g in ["int8", "int8 QAT", "w4a8", "w4a8-fp8", "int4", "int4 mixed", "int4 QAT"]:
            if g not in groups and "QAT" in g:
                continue
            if g not in groups:
                L.append(f"| {key} | {g} | not measured (the reference FP8 kernel is too slow for this model here) "
                         f"| | | | | |")
                continue
            row = groups[g]
            acc = 100 * row["correct"] / n
            L.append(f"| {key} | {row['precision']} | {acc:.2f} | {fp - acc:.2f} | {row['bytes']:,} | "
                     f"{row['bytes'] / r['fp32_bytes']:.2f} | {row['method']} | {row['rounding']} |")
    L.append("")
    L.append("Targets: int8 within 0.1 point of FP32, w4a8 within 0.3, int4 within 1.0 (best calibrator or "
             "mixed precision); int4 QAT within 0.3 (small, resnet18). Rows: every calibrator with plain rounding for int8, w4a8 and int4; GPTQ for the "
             "4-bit precisions with the calibrator that did best with plain rounding; w4a8-fp8 with `max` (nearest, GPTQ "
             "and DPQ). DPQ's target: within 0.3 point of FP32 and no worse than GPTQ.")
    L.append("")
    L.append("![top-1 against model size](accuracy.png)")
    L.append("")
    for key, r in results.items():
        n = r["n"]
        fp = 100 * r["fp32_correct"] / n
        L.append(f"## {key}: {r['title']}")
        L.append("")
        L.append(f"`{r['onnx']}`: FP32 top-1 {fp:.2f}% ({r['fp32_correct']}/{n}), {r['fp32_bytes']:,} bytes.")
        L.append("")
        L.append("| precision | calibrator | rounding | top-1 % | drop | size (bytes) |")
        L.append("| --- | --- | --- | ---: | ---: | ---: |")
        for row in r["rows"]:
            acc = 100 * row["correct"] / n
            L.append(f"| {row['precision']} | {row['method']} | {row['rounding']} | {acc:.2f} | {fp - acc:.2f} | "
                     f"{row['bytes']:,} |")
        L.append("")
        if r["mixed_layers"]:
            L.append(f"Mixed precision (`nibble compare --sensitivity --auto-mixed --max-drop {args.max_drop}` on "
                     f"{args.sweep_limit} test images) chose: `{r['mixed_layers']}`.")
            L.append("")
    L += resnet50_224_section(args.r50_results)
    L.append("## Reference: the seed model")
    L.append("")
    L.append("NVIDIA's INT4 ResNet-50 v1.5 (MLPerf Inference v0.5, open division), fine-tuned with "
             "quantization-aware training, reported 76.10% top-1 on ImageNet against 76.46% in FP32 "
             "(from its documentation; ImageNet is not available here, so nibble does not re-measure it). "
             "nibble runs that model exactly (docs/model-format.md).")
    L.append("")
    Path(args.out).write_text("\n".join(L) + "\n")
    plot(args, results)


def _r50_run(rel):
    """The saved outputs of one bench/qat_resnet50.sh run in the directory `rel` (relative to the
    repository), or None when a file is missing."""
    d = REPO / rel
    try:
        run = {"rel": rel, "dir": d,
               "fp32": json.loads((d / "resnet50-224.fp32.json").read_text()),
               "ft": json.loads((d / "resnet50-224.finetune.json").read_text()),
               "agree": json.loads((d / "resnet50-224.agreement.json").read_text()),
               "text": (d / "resnet50-224.txt").read_text(),
               "device": (d / "resnet50-224.device.txt").read_text().split("\n")}
    except OSError:
        return None
    run["evals"] = re.findall(r"top-1: ([\d.]+)% \((\d+)/(\d+)\)", run["text"])
    run["fp"] = 100 * run["fp32"]["pytorch_top1"]
    run["epochs"] = run["ft"]["history"][-1]["epoch"]
    st = run["ft"].get("settings") or {}
    recipe = f"{run['epochs']} epochs, batch {st.get('batch_size')}, lr {st.get('lr')}"
    if st.get("weight_decay", 5e-4) != 5e-4:
        recipe += f", weight decay {st['weight_decay']:g}"
    if st.get("learn_ranges"):
        recipe += ", learned ranges (LSQ)"
    if st.get("distill"):
        recipe += f", distillation {st['distill']:g} from the FP32 model"
    run["recipe"] = recipe
    run["drop"] = run["fp"] - float(run["evals"][-1][0]) if run["evals"] else float("nan")
    return run


def resnet50_224_section(rels):
    """The ResNet-50 v1.5 224 x 224 INT4 runs on a GPU (bench/qat_resnet50.sh), from their saved
    outputs in the comma-separated directories `rels`: the first in detail, then every one in a table."""
    runs = [r for r in (_r50_run(rel.strip().rstrip("/")) for rel in rels.split(",") if rel.strip()) if r]
    if not runs:
        return []
    main = runs[0]
    rel, d, fp32, ft, agree, evals = (main[k] for k in ("rel", "dir", "fp32", "ft", "agree", "evals"))
    device, fp, epochs, drop = main["device"], main["fp"], main["epochs"], main["drop"]
    L = ["## resnet50-224: ResNet-50 v1.5 at 224 x 224 (torchvision widths), INT4 on a GPU", ""]
    L.append(f"One scripted run of `bench/qat_resnet50.sh` on an {device[0].strip()} ({device[1].strip()}): "
             f"train FP32 ({fp32['epochs']} epochs, bf16 autocast), `nibble calibrate --method percentile:99.999` "
             f"(200 training images), `nibble quantize --precision int4` (PTQ), "
             f"`python3 -m nibble_qat finetune` ({main['recipe']}), quantize, "
             f"and `nibble eval --device cuda` on all 10,000 test images (28 x 28 images resized bilinearly to "
             f"224 x 224). Raw output: `{rel}/resnet50-224.txt`; the command is in `{rel}/README.md`.")
    L.append("")
    L.append("| precision | top-1 % | drop (points) |")
    L.append("| --- | ---: | ---: |")
    L.append(f"| fp32 (PyTorch, float32) | {fp:.2f} | |")
    if len(evals) >= 2:
        for label, (acc, _, _) in zip(["int4 PTQ (percentile:99.999)", f"int4 QAT ({epochs} epochs)"], evals[-2:]):
            L.append(f"| {label} | {float(acc):.2f} | {fp - float(acc):.2f} |")
    L.append("")
    if epochs < 15:
        length = (f"Fine-tuning ran for {epochs} epochs, the number that fit the device time of the run (about "
                  f"{ft['history'][-1]['seconds']:.0f} s per epoch); the seed's recipe runs 15. ")
    else:
        length = f"Fine-tuning ran for {epochs} epochs (about {ft['history'][-1]['seconds']:.0f} s each). "
    check = ""
    try:
        eager, fast = (json.loads((d / f"resnet50-224.check-{m}.finetune.json").read_text())["history"][-1]
                       for m in ("eager", "graphed"))
        check = (f"Before it, the script ran {eager['steps']} steps eagerly and {fast['steps']} as CUDA graphs "
                 f"from the same start on the same batches: training loss {fast['train_loss']:.4f} graphed "
                 f"against {eager['train_loss']:.4f} eager. ")
    except (OSError, KeyError, IndexError, ValueError):
        pass
    L.append(f"Target: int4 within 1.0 point: {'met' if drop <= 1.0 else 'not met'} ({drop:.2f}). " + length + check +
             f"The PyTorch test top-1 after each epoch was "
             + ", ".join(f"{100 * h['test_top1']:.2f}" for h in ft["history"][1:]) + ". "
             f"Engine against the PyTorch fake-quantized model in this run: "
             f"{100 * agree['top1_agreement']:.2f}% of predictions agree ({agree['disagreements']} of "
             f"{agree['images']} differ), and the logits of the first {agree['logit_images']} images are "
             f"{'identical' if agree.get('logits_identical') else 'within ' + str(agree['max_logit_diff_steps']) + ' output steps'}.")
    L.append("")
    if len(runs) > 1:
        L.append("Every complete run of the script (each trains, calibrates and quantizes its own FP32 model "
                 "with the same settings; the fine-tuning settings differ):")
        L.append("")
        L.append("| run | device, date | fine-tuning | fp32 | int4 PTQ | int4 QAT | drop | engine = PyTorch |")
        L.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in runs:
            ptq, qat = (f"{float(r['evals'][i][0]):.2f}" if len(r["evals"]) >= 2 else "" for i in (-2, -1))
            a = r["agree"]
            L.append(f"| `{r['rel']}` | {r['device'][0].split(',')[0].strip()}, {r['device'][1].strip()} | "
                     f"{r['recipe']} | {r['fp']:.2f} | {ptq} | {qat} | {r['drop']:.2f} | "
                     f"{a['images'] - a['disagreements']}/{a['images']} |")
        L.append("")
    return L


def plot(args, results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"small": "o", "resnet18": "s", "resnet50": "^"}
    colors = {"fp32": "black", "int8": "tab:blue", "w4a8": "tab:green", "w4a8-fp8": "tab:olive", "int4": "tab:red",
              "int4 mixed": "tab:purple", "int8 QAT": "tab:cyan", "int4 QAT": "tab:orange"}
    for key, r in results.items():
        n = r["n"]
        pts = [("fp32", r["fp32_bytes"], 100 * r["fp32_correct"] / n)]
        best = best_per_precision(r["rows"])
        for g, row in best.items():
            pts.append((g, row["bytes"], 100 * row["correct"] / n))
        for g, size, acc in pts:
            ax.scatter(size, acc, marker=markers.get(key, "o"), color=colors[g], s=50,
                       label=f"{g}" if key == list(results)[0] else None)
        xs = [p[1] for p in sorted(pts, key=lambda p: p[1])]
        ys = [p[2] for p in sorted(pts, key=lambda p: p[1])]
        ax.plot(xs, ys, color="0.7", linewidth=1, zorder=0)
        ax.annotate(key, (pts[0][1], pts[0][2]), textcoords="offset points", xytext=(-10, 8))
    ax.set_xscale("log")
    ax.set_xlabel("model size (bytes of tensors, log scale)")
    ax.set_ylabel("Fashion-MNIST top-1 (%)")
    ax.set_title("Quantization: accuracy against size (best per precision)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
