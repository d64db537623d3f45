"""Hostile files, as an attacker would craft them: each gets one line `nibble: error: <file>:
<problem>` and exit status 2 before any large allocation, never a crash or a hang."""
import gzip
import os
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO, make_small_cnn
from test_cli_errors import assert_one_line_error

FMNIST = REPO / "models" / "fmnist_resnet.onnx"


def npy_header(descr, shape):
    d = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, ", ".join(map(str, shape)) + ("," if len(shape) == 1 else ""))
    d += " " * ((64 - (10 + len(d) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode()


def test_npy_with_an_overflowing_shape(run_nibble, tmp_path):
    x = tmp_path / "x.npy"
    x.write_bytes(npy_header("<f4", (2**60 + 1, 1, 28, 28)) + b"\0" * 64)
    assert_one_line_error(run_nibble("run", FMNIST, "-i", x), x, "2^56")


def test_npy_claiming_more_data_than_it_holds(run_nibble, tmp_path):
    x = tmp_path / "x.npy"
    x.write_bytes(npy_header("<f4", (100000, 1, 28, 28)) + b"\0" * 64)
    assert_one_line_error(run_nibble("run", FMNIST, "-i", x), x, "truncated")


def onnx_model(path, nodes, inits, inputs, outputs, opset=13):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_initializer_with_an_overflowing_shape(run_nibble, tmp_path):
    w = TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([2**62 + 1, 4])
    w.raw_data = b"\0" * 16
    m = onnx_model(tmp_path / "huge.onnx", [helper.make_node("MatMul", ["x", "w"], ["y"])], [w],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2**62 + 1])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    for cmd in ("inspect", "run"):
        args = [cmd, m] if cmd == "inspect" else [cmd, m, "-i", tmp_path / "none.npy"]
        proc = run_nibble(*args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("op,attr", [("Conv", "strides"), ("Conv", "dilations"), ("MaxPool", "strides"),
                                     ("MaxPool", "kernel_shape")])
def test_onnx_window_of_zero(run_nibble, tmp_path, op, attr):
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1]}
    if op == "Conv" and attr == "dilations":
        attrs["dilations"] = [1, 1]
    attrs[attr] = [0, 1]
    inits = [numpy_helper.from_array(np.zeros((2, 1, 3, 3), np.float32), "w")] if op == "Conv" else []
    ins = ["x", "w"] if op == "Conv" else ["x"]
    m = onnx_model(tmp_path / "zero.onnx", [helper.make_node(op, ins, ["y"], **attrs)], inits,
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert_one_line_error(run_nibble("inspect", m), m, attr, "between 1 and")


@pytest.mark.parametrize("case", ["weight-rank", "kernel-length", "pads-length"])
def test_onnx_window_ranks_that_disagree(run_nibble, tmp_path, case):
    # The weight arrives through DequantizeLinear, so its rank is only known during shape
    # inference (ONNX's own would read past the input's shape here).
    w = np.zeros((2, 1, 3, 3, 3) if case == "weight-rank" else (2, 1, 3, 3), np.int8)
    attrs = {"kernel_shape": [3, 3, 3]} if case == "kernel-length" else {}
    if case == "pads-length":
        attrs["pads"] = [1, 1]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["y"], **attrs)]
    inits = [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.float32(0.1), "ws")]
    m = onnx_model(tmp_path / "ranks.onnx", nodes, inits,
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])])
    want = {"weight-rank": "weight has rank 5", "kernel-length": "kernel_shape has 3 values",
            "pads-length": "pads has 2 values"}[case]
    assert_one_line_error(run_nibble("inspect", m), m, want)


def idx_header(code, dims):
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def fmnist_dir(tmp_path, images):
    d = tmp_path / "fmnist"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte").write_bytes(images)
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_header(0x08, [10]) + bytes(10))
    return d


def test_idx_claiming_gigabytes(run_nibble, tmp_path):
    # 1,233 bytes whose header declares 16 GB of images.
    images = idx_header(0x08, [20000000, 28, 28]) + bytes(1233 - 16)
    d = fmnist_dir(tmp_path, images)
    proc = run_nibble("eval", FMNIST, "--data", "fashion-mnist:test", "--data-dir", d)
    assert_one_line_error(proc, d / "t10k-images-idx3-ubyte", "more than the 1073741824 bytes")


def test_gzip_idx_inflating_past_its_header(run_nibble, tmp_path):
    # The header declares 10 images; the stream inflates to far more: reading stops after them.
    data = idx_header(0x08, [10, 28, 28]) + bytes(10 * 784 + 50 * 2**20)
    d = fmnist_dir(tmp_path, gzip.compress(data, compresslevel=1))
    os.replace(d / "t10k-images-idx3-ubyte", d / "t10k-images-idx3-ubyte.gz")
    proc = run_nibble("eval", FMNIST, "--data", "fashion-mnist:test", "--data-dir", d)
    assert_one_line_error(proc, d / "t10k-images-idx3-ubyte.gz", "more")


def test_bmp_claiming_a_huge_picture(run_nibble, tmp_path):
    # 67 bytes: a BMP header of 30000 x 30000 pixels of 24 bits, then 13 bytes of "pixels".
    bmp = b"BM" + struct.pack("<IHHI", 67, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 0, 0, 0, 0)
    bmp += bytes(67 - len(bmp))
    d = tmp_path / "images" / "a"
    d.mkdir(parents=True)
    f = d / "bomb.bmp"
    f.write_bytes(bmp)
    assert_one_line_error(run_nibble("eval", FMNIST, "--data", tmp_path / "images"), f, "pixels")


def test_truncated_jpeg(run_nibble, tmp_path):
    from PIL import Image
    d = tmp_path / "images" / "a"
    d.mkdir(parents=True)
    f = d / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(f, quality=90)
    f.write_bytes(f.read_bytes()[:300])
    assert_one_line_error(run_nibble("eval", FMNIST, "--data", tmp_path / "images"), f, "JPEG")


def qdq_model(path, scale):
    x_s = numpy_helper.from_array(np.array(scale, np.float32), "xs")
    x_z = numpy_helper.from_array(np.array(0, np.uint8), "xz")
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.int8), "wq")
    w_s = numpy_helper.from_array(np.array([0.1, 0.1], np.float32), "ws")
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    return onnx_model(path, nodes, [x_s, x_z, w, w_s], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])])


@pytest.mark.parametrize("scale", [float("nan"), -0.5, 0.0, float("inf")])
def test_qdq_scales_must_be_finite_and_positive(run_nibble, tmp_path, scale):
    m = qdq_model(tmp_path / "qdq.onnx", scale)
    proc = run_nibble("quantize", m, "-o", tmp_path / "out")
    assert_one_line_error(proc, m, "not a finite positive number")
    assert not (tmp_path / "out").exists()


def small_cnn_and_table(run_nibble, tmp_path):
    """The conftest's small CNN (1 x 6 x 6 input) and a max calibration table of it."""
    m = tmp_path / "cnn.onnx"
    make_small_cnn(m)
    x = tmp_path / "calib.npy"
    np.save(x, np.random.default_rng(0).uniform(0, 1, (8, 1, 6, 6)).astype(np.float32))
    calib = tmp_path / "m.calib"
    run_nibble("calibrate", m, "--data", x, "--method", "max", "-o", calib, check=True)
    return m, calib


def test_calibration_ranges_far_beyond_any_activation_warn(run_nibble, tmp_path):
    m, calib = small_cnn_and_table(run_nibble, tmp_path)
    lines = calib.read_text().splitlines()
    lines = [" ".join(l.split()[:2] + ["-3e38", "3e38"]) if l and not l.startswith("#") and l.split()[0] == "c" else l
             for l in lines]
    calib.write_text("\n".join(lines) + "\n")
    proc = run_nibble("quantize", m, "--calib", calib, "--precision", "int8", "-o", tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "'c'" in proc.stderr, proc.stderr


@pytest.fixture
def int8_dir(run_nibble, tmp_path):
    m, calib = small_cnn_and_table(run_nibble, tmp_path)
    out = tmp_path / "q"
    run_nibble("quantize", m, "--calib", calib, "--precision", "int8", "--all-layers", "-o", out, check=True)
    return out


def layer_with(d, key):
    for f in sorted(d.iterdir()):
        if f.is_file() and any(l.startswith(key + "=") for l in f.read_text().splitlines()):
            return f
    raise AssertionError(f"no layer file of {d} has {key}")


@pytest.mark.parametrize("key,value", [("stride", "2:0 0"), ("dilation", "2:1 0"), ("kernel_size", "2:0 3")])
def test_model_dir_conv_window_of_zero(run_nibble, int8_dir, key, value):
    f = layer_with(int8_dir, "dilation")
    f.write_text("\n".join(f"{key}={value}" if l.startswith(key + "=") else l for l in f.read_text().splitlines()) + "\n")
    for cmd in ("inspect", "run"):
        proc = run_nibble(cmd, int8_dir) if cmd == "inspect" else run_nibble(cmd, int8_dir, "-i", int8_dir / "none.npy")
        assert_one_line_error(proc, f)


def test_model_dir_data_linked_outside(run_nibble, int8_dir, tmp_path):
    data = next((int8_dir / "npdata").iterdir())
    secret = tmp_path / "secret"
    secret.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(secret)
    assert_one_line_error(run_nibble("inspect", int8_dir), data, "outside the model directory")
