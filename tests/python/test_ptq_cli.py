"""Post-training quantization from the command line: calibrate, quantize, eval, compare, export.

Runs on small subsets of Fashion-MNIST with the committed model (models/fmnist_resnet.onnx).
"""
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import calibrate

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "fmnist_resnet.onnx"
DATA = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.skipif(not (DATA / "t10k-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST is not installed")


def top1(proc):
    m = re.search(r"top-1: ([\d.]+)% \((\d+)/(\d+)\)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return int(m.group(2)), int(m.group(3))


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("nibble: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("ptq")


@pytest.fixture(scope="module")
def calib(nibble_bin, workdir):
    return calibrate(nibble_bin, MODEL, workdir / "max.calib", 300)


@pytest.fixture(scope="module")
def int8_model(nibble_bin, workdir, calib):
    import subprocess
    out = workdir / "int8.nbl"
    proc = subprocess.run([nibble_bin, "quantize", str(MODEL), "--calib", str(calib), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def test_calib_file_is_readable_text(calib):
    lines = [l for l in calib.read_text().splitlines() if l and not l.startswith("#")]
    # The input and every float tensor of the model, one line each: name method lo hi.
    assert len(lines) == 39
    names = set()
    for line in lines:
        name, method, lo, hi = line.split()
        assert method == "max"
        assert float(lo) <= float(hi)
        names.add(name)
    assert "input" in names and "logits" in names


def test_int8_stays_within_half_a_point(run_nibble, int8_model):
    fp = top1(run_nibble("eval", MODEL, "--limit", "1000", check=True))
    q = top1(run_nibble("eval", int8_model, "--limit", "1000", check=True))
    assert fp[1] == q[1] == 1000
    assert abs(fp[0] - q[0]) <= 5, (fp, q)
    layer = (int8_model / "layers_layers_0_conv1").read_text()
    assert layer.startswith("Conv2d\n") and "compute_mode=u8s8s32" in layer


def test_int4_and_w4a8_are_smaller(run_nibble, workdir, calib, int8_model):
    sizes = {}
    for precision in ("int4", "w4a8"):
        out = workdir / f"{precision}.nbl"
        proc = run_nibble("quantize", MODEL, "--calib", calib, "--precision", precision, "-o", out, check=True)
        assert "first layer kept at 8 bits" in proc.stdout and "last layer kept at 8 bits" in proc.stdout
        sizes[precision] = sum(f.stat().st_size for f in (out / "npdata").iterdir())
        n, total = top1(run_nibble("eval", out, "--limit", "300", check=True))
        assert n / total > 0.8, (precision, n, total)
    int8 = sum(f.stat().st_size for f in (int8_model / "npdata").iterdir())
    assert sizes["int4"] < 0.6 * int8 and sizes["w4a8"] < 0.6 * int8


def test_w4a8_fp8_runs_and_exports_at_opset_19(run_nibble, workdir, calib):
    out = workdir / "fp8.nbl"
    proc = run_nibble("quantize", MODEL, "--calib", calib, "--precision", "w4a8-fp8", "-o", out, check=True)
    assert re.search(r"layers_layers_0_conv1\s+Conv\s+w4a8-fp8", proc.stdout), proc.stdout
    assert "compute_mode=f8s4f32" in (out / "layers_layers_0_conv1").read_text()
    n, total = top1(run_nibble("eval", out, "--limit", "200", check=True))
    assert n / total > 0.85
    # FP8 needs the float8 types of opset 19: the default for such a model; opset 13 is refused.
    assert_one_line_error(run_nibble("export", out, "--opset", "13", "-o", workdir / "fp8.onnx"), "opset 19")
    assert not (workdir / "fp8.onnx").exists()
    proc = run_nibble("export", out, "-o", workdir / "fp8.onnx", check=True)
    assert "opset 19" in proc.stdout
    assert (workdir / "fp8.onnx").stat().st_size > 0


def test_dpq_writes_group_scales_and_needs_fp8_layers(run_nibble, workdir, calib):
    out = workdir / "dpq.nbl"
    proc = run_nibble("quantize", MODEL, "--calib", calib, "--precision", "w4a8-fp8", "--dpq", "--group-size", "16",
                      "--samples", "64", "-o", out, check=True)
    assert re.search(r"layers_layers_0_conv1\s+Conv\s+w4a8-fp8", proc.stdout), proc.stdout
    layer = (out / "layers_layers_0_conv1").read_text()
    assert "compute_mode=f8s4f32" in layer and "weight_group_size=16" in layer and "weight_group_scale=f32" in layer
    n, total = top1(run_nibble("eval", out, "--limit", "200", check=True))
    assert n / total > 0.85
    # --dpq rounds FP8 layers only; a wrong group size is a usage error.
    assert_one_line_error(run_nibble("quantize", MODEL, "--calib", calib, "--dpq", "-o", workdir / "x.nbl"),
                          "--dpq", "w4a8-fp8")
    assert_one_line_error(run_nibble("quantize", MODEL, "--calib", calib, "--precision", "w4a8-fp8", "--dpq",
                                     "--group-size", "0", "-o", workdir / "x.nbl"), "--group-size")
    assert not (workdir / "x.nbl").exists()


def test_layer_precision_and_exclude(run_nibble, workdir, calib):
    out = workdir / "mixed.nbl"
    proc = run_nibble("quantize", MODEL, "--calib", calib, "--layer-precision", "layers_layers_1_conv1:int4",
                      "--exclude", "/layers/layers.2/conv1/Conv", "-o", out, check=True)
    assert re.search(r"layers_layers_1_conv1\s+Conv\s+int4\s+set with --layer-precision", proc.stdout), proc.stdout
    assert re.search(r"layers_layers_2_conv1\s+Conv\s+float\s+excluded with --exclude", proc.stdout), proc.stdout
    assert "compute_mode=f32f32f32" in (out / "layers_layers_2_conv1").read_text()
    n, total = top1(run_nibble("eval", out, "--limit", "300", check=True))
    assert n / total > 0.85


def test_calibration_methods_and_compare(run_nibble, workdir):
    out = workdir / "best.calib"
    proc = run_nibble("calibrate", MODEL, "--samples", "100", "--method", "compare", "--eval-limit", "200",
                      "-o", out, check=True)
    for method in ("max", "percentile:99.99", "entropy", "mse"):
        assert re.search(rf"^{re.escape(method)}\s+\d+\.\d+\s+-?\d+\.\d+$", proc.stdout, re.M), proc.stdout
    best = re.search(r"^best: (\S+)$", proc.stdout, re.M).group(1)
    assert f" {best} " in out.read_text()


def test_compare_reports_per_layer_error_and_sensitivity(run_nibble, int8_model):
    proc = run_nibble("compare", MODEL, int8_model, "--limit", "100", "--sensitivity", "--auto-mixed",
                      "--max-drop", "2", check=True)
    rows = re.findall(r"^(\S+_quantize)\s+([\d.]+)\s+([\d.e+-]+)\s+(\S+)$", proc.stdout, re.M)
    # The input, the nine activations between convs and the two downsampling convs' outputs
    # (requantized by default; --shortcut-sums hands their sums over).
    assert len(rows) == 12, proc.stdout
    for _, cos, nmse, _ in rows:
        assert 0.99 < float(cos) <= 1.0 and float(nmse) < 0.02
    assert re.search(r"top-1 agreement with FP32: ([\d.]+)%", proc.stdout)
    sens = re.findall(r"^(\S+)\s+([\d.]+)\s+(-?[\d.]+)$", proc.stdout.split("sensitivity:")[1], re.M)
    assert len(sens) == 12
    m = re.search(r"auto-mixed: (\d+) of 12 layers at int4, top-1 [\d.]+% \(FP32 [\d.]+%, drop (-?[\d.]+)", proc.stdout)
    assert m and float(m.group(2)) <= 2.0, proc.stdout
    assert "--layer-precision" in proc.stdout


def test_qdq_export_runs_and_imports_back(run_nibble, workdir, int8_model):
    onnx_path = workdir / "int8.onnx"
    run_nibble("export", int8_model, "-o", onnx_path, check=True)
    import onnx
    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m)
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    q = top1(run_nibble("eval", int8_model, "--limit", "500", check=True))
    x = top1(run_nibble("eval", onnx_path, "--limit", "500", check=True))
    assert abs(q[0] - x[0]) <= 2, (q, x)
    back = workdir / "back.nbl"
    proc = run_nibble("quantize", onnx_path, "-o", back, check=True)
    # 11 activations and the two downsampling convs' requantized outputs
    assert "QDQ model: 13 quantized activations and 12 quantized weights" in proc.stdout
    for f in (int8_model / "npdata").iterdir():
        assert (back / "npdata" / f.name).read_bytes() == f.read_bytes(), f.name


def test_npy_and_image_directory_data(run_nibble, workdir, int8_model):
    import gzip
    with gzip.open(DATA / "t10k-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:40]
    with gzip.open(DATA / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:40]
    x = workdir / "x.npy"
    np.save(x, (pixels.astype(np.float32) / 255.0)[:, None])
    calib = workdir / "npy.calib"
    run_nibble("calibrate", MODEL, "--data", x, "-o", calib, check=True)
    assert "data: " + str(x) + ", 40 samples" in calib.read_text()
    # A directory of PGM images with one subfolder per class gives labels.
    root = workdir / "images"
    for i, (img, label) in enumerate(zip(pixels, labels)):
        d = root / f"class{label}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.pgm").write_bytes(b"P5\n28 28\n255\n" + img.tobytes())
    n, total = top1(run_nibble("eval", int8_model, "--data", root, check=True))
    # Sorted folder names class0..class9 give the labels back when all ten classes are present.
    assert len(set(labels.tolist())) == 10
    assert total == 40
    same = top1(run_nibble("eval", int8_model, "--limit", "40", check=True))
    assert n == same[0], (n, same)
    # An .npy batch has no labels: eval says so.
    assert_one_line_error(run_nibble("eval", int8_model, "--data", x), "no labels")


def test_bad_calibration_tables(run_nibble, workdir, calib):
    text = calib.read_text()
    cases = {
        "unknown.calib": (text + "no_such_tensor max 0 1\n", "no_such_tensor"),
        "nan.calib": (text.replace("input max 0 1", "input max 0 nan"), "nan.calib:"),
        "inverted.calib": (text.replace("input max 0 1", "input max 2 1"), "inverted.calib:"),
    }
    for name, (body, fragment) in cases.items():
        path = workdir / name
        path.write_text(body)
        out = workdir / (name + ".nbl")
        proc = run_nibble("quantize", MODEL, "--calib", path, "-o", out)
        assert_one_line_error(proc, fragment)
        assert not out.exists()


def test_bad_options(run_nibble, workdir, calib, int8_model):
    out = workdir / "never.nbl"
    assert_one_line_error(run_nibble("quantize", MODEL, "--calib", calib, "--layer-precision", "nope:int4", "-o", out),
                          "--layer-precision", "nope")
    assert_one_line_error(run_nibble("quantize", MODEL, "--calib", calib, "--layer-precision", "fc:int3", "-o", out),
                          "unknown precision 'int3'")
    assert_one_line_error(run_nibble("quantize", MODEL, "--calib", calib, "--exclude", "nope", "-o", out), "--exclude")
    assert not out.exists()
    # An existing output is refused before any work, and left as it was.
    before = sorted(p.name for p in int8_model.iterdir())
    assert_one_line_error(run_nibble("quantize", MODEL, "--calib", calib, "-o", int8_model), str(int8_model),
                          "already exists")
    assert sorted(p.name for p in int8_model.iterdir()) == before
    assert_one_line_error(run_nibble("calibrate", MODEL, "--method", "median", "-o", workdir / "x.calib"), "median")
    assert_one_line_error(run_nibble("calibrate", int8_model, "-o", workdir / "y.calib"), "model directory")
    assert_one_line_error(run_nibble("eval", int8_model, "--data", workdir / "missing.npy"), "missing.npy")


def test_matmul_with_separate_bias_adds(run_nibble, tmp_path):
    """MatMul + Add(bias) + Relu (how linear layers often export) quantizes and tracks FP32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((16, 8)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32) * 0.5
    b2 = rng.standard_normal((1, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w1"], ["m1"], name="fc1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
        helper.make_node("Add", ["m2", "b2"], ["y"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    x = tmp_path / "x.npy"
    np.save(x, rng.random((64, 1, 4, 4), dtype=np.float32))
    calib = tmp_path / "mlp.calib"
    run_nibble("calibrate", model, "--data", x, "-o", calib, check=True)
    out = tmp_path / "mlp.nbl"
    proc = run_nibble("quantize", model, "--calib", calib, "-o", out, check=True)
    assert re.search(r"^fc1\s+MatMul\s+int8", proc.stdout, re.M) and re.search(r"^fc2\s+MatMul\s+int8", proc.stdout, re.M)
    run_nibble("run", model, "--input", x, "-o", tmp_path / "yf.npy", check=True)
    run_nibble("run", out, "--input", x, "-o", tmp_path / "yq.npy", check=True)
    yf, yq = np.load(tmp_path / "yf.npy"), np.load(tmp_path / "yq.npy")
    assert yq.shape == yf.shape == (64, 3)
    assert np.abs(yq - yf).max() < 0.05 * np.abs(yf).max(), np.abs(yq - yf).max()
