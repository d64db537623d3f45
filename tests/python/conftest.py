"""Shared fixtures for the command-line tests: the nibble binary and small ONNX models."""
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def nibble_bin():
    path = Path(os.environ.get("NIBBLE_BIN", REPO / "build" / "nibble"))
    if not path.exists():
        pytest.fail(f"nibble binary not found at {path}; build first (make build)")
    return str(path)


@pytest.fixture
def run_nibble(nibble_bin):
    def run(*args, check=False, timeout=600):
        proc = subprocess.run([nibble_bin, *map(str, args)], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"nibble {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc
    return run


def calibrate(nibble_bin, model, out, samples, method="max"):
    """`nibble calibrate MODEL --samples N --method M -o OUT`, which must succeed; returns OUT."""
    proc = subprocess.run([str(nibble_bin), "calibrate", str(model), "--samples", str(samples), "--method", method,
                           "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nibble calibrate {model} failed:\n{proc.stderr}"
    return out


def make_small_cnn(path, seed=0, batch="N"):
    """Conv(3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm, with random weights."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    fw = rng.standard_normal((3, 4)).astype(np.float32)
    fb = rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(fw, "fw"), numpy_helper.from_array(fb, "fb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return dict(w=w, b=b, fw=fw, fb=fb)


def small_cnn_reference(x, p):
    """The small CNN in numpy, float64."""
    n = x.shape[0]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    c = np.zeros((n, 4, 6, 6))
    for i in range(3):
        for j in range(3):
            c += np.einsum("nhw,k->nkhw", xp[:, 0, i:i + 6, j:j + 6], p["w"][:, 0, i, j])
    c += p["b"][None, :, None, None]
    g = np.maximum(c, 0).mean(axis=(2, 3))
    return g @ p["fw"].T.astype(np.float64) + p["fb"]


@pytest.fixture
def small_cnn(tmp_path):
    path = tmp_path / "small_cnn.onnx"
    params = make_small_cnn(path)
    return path, params
