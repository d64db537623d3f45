#!/usr/bin/python3
"""ONNX Runtime on nibble's QDQ exports: each exported model against nibble's own engine on the
same inputs (Fashion-MNIST test images by default), with the export's opset and element types.

    python3 tools/ort_qdq_check.py --nibble build/nibble --work DIR MODEL.nbl=EXPORT.onnx ...

For every pair: `nibble run MODEL.nbl` on the images, ONNX Runtime (CPU) on EXPORT.onnx, and the
cosine similarity of the logits and the top-1 agreement. The QDQ graph computes in float what
nibble computes in integers (or, for FP8 layers, sums exactly), so the logits are close but not
equal. Exit status 1 when ONNX Runtime cannot load or run a model, or when the top-1 agreement
falls below --min-agreement.
"""
import argparse
import gzip
import pathlib
import subprocess
import sys

import numpy as np

DATA = pathlib.Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def images(n, data):
    if data:
        return np.load(data)[:n].astype(np.float32)
    with gzip.open(DATA) as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    return (pixels.astype(np.float32) / 255.0)[:, None]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="MODEL.nbl=EXPORT.onnx")
    ap.add_argument("--nibble", default="build/nibble")
    ap.add_argument("--work", required=True, help="folder for the inputs and outputs")
    ap.add_argument("--data", help=".npy of inputs (default: Fashion-MNIST test images)")
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--min-agreement", type=float, default=0.95)
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    x = images(args.count, args.data)
    np.save(work / "x.npy", x)
    print(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, {len(x)} inputs")
    print("| model | export | opset | element types | cosine | top-1 agreement | ORT graph optimizations |")
    print("| --- | --- | ---: | --- | ---: | ---: | --- |")
    ok = True
    for pair in args.pairs:
        model, export = pair.split("=")
        out = work / (pathlib.Path(export).stem + "_nibble.npy")
        subprocess.run([args.nibble, "run", model, "-i", str(work / "x.npy"), "-o", str(out)], check=True,
                       capture_output=True)
        want = np.load(out).reshape(len(x), -1)
        proto = onnx.load(export)
        opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        names = {1: "float", 2: "uint8", 3: "int8", 17: "float8e4m3fn", 21: "uint4", 22: "int4"}
        types = sorted({names.get(t.data_type, str(t.data_type)) for t in proto.graph.initializer})
        # ONNX Runtime's default (extended) graph optimizations fuse DequantizeLinear -> Conv ->
        # QuantizeLinear into QLinearConv, which takes no float8 (1.30 fails the load on that
        # fused node): FP8 exports that fail so are run again with the basic optimizations only.
        level = "all"
        try:
            try:
                sess = ort.InferenceSession(export, providers=["CPUExecutionProvider"])
            except Exception as e:
                if "float8e4m3fn" not in types or "QLinear" not in str(e):
                    raise
                so = ort.SessionOptions()
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                sess = ort.InferenceSession(export, so, providers=["CPUExecutionProvider"])
                level = "basic"
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0].reshape(len(x), -1)
        except Exception as e:  # ONNX Runtime's own errors: the export is not readable
            print(f"| {model} | {export} | {opset} | {', '.join(types)} | ONNX Runtime fails: {str(e).splitlines()[0]} | | |")
            ok = False
            continue
        cos = float((want * got).sum() / (np.linalg.norm(want) * np.linalg.norm(got) + 1e-30))
        agree = float((want.argmax(1) == got.argmax(1)).mean())
        ok &= agree >= args.min_agreement
        print(f"| {model} | {export} | {opset} | {', '.join(types)} | {cos:.6f} | {agree:.4f} | {level} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
