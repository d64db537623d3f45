#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (tests/fuzz/corpus/<target>/): small valid inputs of
every format, from which the fuzzers mutate. Run from the repository root with Debian's Python
(numpy, onnx, PIL) and a built nibble (for the model directory seeds):

    /usr/bin/python3 tests/fuzz/make_corpus.py build/nibble
"""
import gzip
import io
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

ROOT = pathlib.Path("tests/fuzz/corpus")


def put(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def npy_bytes(a):
    f = io.BytesIO()
    np.save(f, a)
    return f.getvalue()


def idx_bytes(a):
    code = {np.uint8: 0x08, np.int8: 0x09}[a.dtype.type]
    return bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def image_bytes(img, fmt, **kw):
    f = io.BytesIO()
    img.save(f, fmt, **kw)
    return f.getvalue()


def small_images():
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), "RGB")
    grey_alpha = Image.fromarray(rng.integers(0, 256, (6, 5, 2), dtype=np.uint8), "LA")
    return {
        "rgb.png": image_bytes(rgb, "PNG"),
        "grey_alpha.png": image_bytes(grey_alpha, "PNG"),
        "palette.png": image_bytes(rgb.convert("P"), "PNG"),
        "deep.png": image_bytes(Image.fromarray(rng.integers(0, 65536, (4, 4), dtype=np.uint16)), "PNG"),
        "baseline.jpg": image_bytes(rgb, "JPEG", quality=90),
        "progressive.jpg": image_bytes(rgb, "JPEG", quality=75, progressive=True),
        "grey.jpg": image_bytes(rgb.convert("L"), "JPEG"),
        "rgb.bmp": image_bytes(rgb, "BMP"),
        "palette.bmp": image_bytes(rgb.convert("P"), "BMP"),
        "rgb.gif": image_bytes(rgb, "GIF"),
        "rgb.tga": image_bytes(rgb, "TGA"),
        "rgb.ppm": image_bytes(rgb, "PPM"),
    }


def tiny_cnn(qdq=False):
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm on 1 x 2 x 6 x 6 (QDQ around the conv when asked)."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (3, 16)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.normal(0, 0.1, (3,)).astype(np.float32), "fb"),
    ]
    nodes = []
    x = "x"
    w = "w"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                  numpy_helper.from_array(np.array(0, np.uint8), "xz"),
                  numpy_helper.from_array(np.full((4,), 0.01, np.float32), "ws"),
                  numpy_helper.from_array(rng.integers(-100, 100, (4, 2, 3, 3)).astype(np.int8), "wq")]
        inits = [t for t in inits if t.name != "w"]
        nodes += [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=0)]
        x, w = "xd", "wd"
    nodes += [
        helper.make_node("Conv", [x, w, "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Flatten", ["a"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def float_ops_cnn():
    """Conv -> x * Sigmoid(x) -> Concat with the conv -> Clip(0, 6) -> GlobalAveragePool -> Flatten
    -> Gemm: quantize keeps the Sigmoid, Mul, Concat and Clip as float Op layers."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.5, (3, 8)).astype(np.float32), "fw"),
             numpy_helper.from_array(np.array(0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Concat", ["m", "c"], ["k"], axis=1),
             helper.make_node("Clip", ["k", "lo", "hi"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "float_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def shape_ops_model():
    """MatMul, Add, Reshape, Transpose, Softmax, Concat, Sigmoid on a 1 x 8 input."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (8, 8)).astype(np.float32), "m"),
             numpy_helper.from_array(np.array([1, 2, 4], np.int64), "s")]
    nodes = [helper.make_node("MatMul", ["x", "m"], ["a"]),
             helper.make_node("Add", ["a", "x"], ["b"]),
             helper.make_node("Reshape", ["b", "s"], ["c"]),
             helper.make_node("Transpose", ["c"], ["d"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["d"], ["e"]),
             helper.make_node("Concat", ["d", "e"], ["f"], axis=1),
             helper.make_node("Softmax", ["f"], ["y"], axis=-1)]
    g = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def pack_model_dir(d):
    """A model directory as the model_dir target reads it: '@@ path' lines before each file."""
    out = b""
    for p in sorted(d.rglob("*")):
        if p.is_file():
            out += b"@@ " + str(p.relative_to(d)).encode() + b"\n" + p.read_bytes() + b"\n"
    return out


def main():
    nibble = sys.argv[1] if len(sys.argv) > 1 else "build/nibble"
    if ROOT.exists():
        shutil.rmtree(ROOT)
    rng = np.random.default_rng(0)

    put("npy", "f32.npy", npy_bytes(rng.normal(size=(2, 3)).astype(np.float32)))
    put("npy", "u8_nchw.npy", npy_bytes(rng.integers(0, 256, (1, 1, 4, 4), dtype=np.uint8)))
    put("npy", "bool.npy", npy_bytes(np.array([True, False, True])))
    put("npy", "s64_scalar.npy", npy_bytes(np.array(7, np.int64)))
    put("npy", "empty.npy", npy_bytes(np.zeros((0, 3), np.float32)))
    put("npy", "s16.npy", npy_bytes(np.arange(4, dtype=np.int16)))

    images = rng.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    put("idx", "images.idx", idx_bytes(images))
    put("idx", "labels.idx", idx_bytes(np.array([1, 0, 9], np.uint8)))
    put("idx", "images.idx.gz", gzip.compress(idx_bytes(images), mtime=0))
    put("idx", "signed.idx", idx_bytes(np.array([[-1, 2], [3, -4]], np.int8)))

    imgs = small_images()
    for name, data in imgs.items():
        put("image", name, data)
    # image_folder records: [class][kind][length u16][bytes].
    kinds = {".png": 0, ".jpg": 1, ".bmp": 2, ".gif": 3, ".tga": 4, ".ppm": 5}

    def rec(cls, name):
        data = imgs[name]
        return bytes([cls, kinds[pathlib.Path(name).suffix]]) + struct.pack("<H", len(data)) + data

    put("image_folder", "two_classes", rec(0, "rgb.png") + rec(1, "baseline.jpg") + rec(1, "rgb.bmp"))
    put("image_folder", "flat", rec(3, "grey_alpha.png") + rec(3, "rgb.gif"))

    put("calib_table", "table.calib", b"# nibble calibration table\n# method: percentile:99.999\n"
        b"x percentile:99.999 0 2.5\nc max -1.25 3.75\nr mse 0 1e-3\n")
    put("calib_table", "crlf.calib", b"x entropy -0.5 0.5\r\ny max 0 +7\r\n")

    cnn = tiny_cnn().SerializeToString()
    qdq = tiny_cnn(qdq=True).SerializeToString()
    ops = shape_ops_model().SerializeToString()
    for t in ("onnx_import", "onnx_run"):
        put(t, "tiny_cnn.onnx", cnn)
        put(t, "shape_ops.onnx", ops)
        put(t, "qdq_cnn.onnx", qdq)
    put("qdq_import", "qdq_cnn.onnx", qdq)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "tiny.onnx").write_bytes(cnn)
        np.save(tmp / "x.npy", rng.uniform(0, 1, (4, 2, 6, 6)).astype(np.float32))
        for precision in ("int8", "int4"):
            calib = tmp / f"{precision}.calib"
            subprocess.run([nibble, "calibrate", str(tmp / "tiny.onnx"), "--data", str(tmp / "x.npy"), "--method", "max",
                            "--precision", precision, "-o", str(calib)], check=True, stdout=subprocess.DEVNULL)
            out = tmp / f"m_{precision}"
            subprocess.run([nibble, "quantize", str(tmp / "tiny.onnx"), "--calib", str(calib), "--precision", precision,
                            "--all-layers", "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
            put("model_dir", f"tiny_{precision}", pack_model_dir(out))
        (tmp / "float_ops.onnx").write_bytes(float_ops_cnn().SerializeToString())
        calib = tmp / "float_ops.calib"
        subprocess.run([nibble, "calibrate", str(tmp / "float_ops.onnx"), "--data", str(tmp / "x.npy"), "--method", "max",
                        "-o", str(calib)], check=True, stdout=subprocess.DEVNULL)
        out = tmp / "m_float_ops"
        subprocess.run([nibble, "quantize", str(tmp / "float_ops.onnx"), "--calib", str(calib), "-o", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        put("model_dir", "tiny_float_ops", pack_model_dir(out))
    for d in sorted(ROOT.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} files, {sum(f.stat().st_size for f in d.iterdir())} bytes")


if __name__ == "__main__":
    main()
