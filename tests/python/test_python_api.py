"""The `nibble` Python package (build/python): models on numpy arrays, calibration with data
readers, quantization and evaluation, each against the command line doing the same."""
import importlib
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "models" / "fmnist_resnet.onnx"
SEED = REPO / "models" / "mlperf-v0.5-int4-resnet50" / "model"


@pytest.fixture(scope="module")
def nibble(nibble_bin):
    package = Path(nibble_bin).resolve().parent / "python"
    if os.environ.get("NIBBLE_PYTHON_PACKAGE") == "off":
        pytest.skip("this build has no Python package (NIBBLE_PYTHON=OFF)")
    if not (package / "nibble" / "__init__.py").exists():
        pytest.fail(f"the Python package was not built at {package} (pybind11-dev and python3-dev; make build)")
    sys.path.insert(0, str(package))
    try:
        return importlib.import_module("nibble")
    finally:
        sys.path.remove(str(package))


@pytest.fixture(scope="module")
def images():
    sys.path.insert(0, str(REPO / "python"))
    from nibble_qat import data
    x, y = data.load_split(data.DEFAULT_DIR, "test")
    return (x[:300].astype(np.float32) / 255.0)[:, None], y[:300].astype(np.int64)


def test_run_matches_the_command_line(nibble, run_nibble, tmp_path):
    m = nibble.load(SMALL)
    assert m.inputs == [("input", "f32", [None, 1, 28, 28])] and m.outputs == [("logits", "f32", [None, 10])]
    assert m.device == "cpu" and m.path == str(SMALL)
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    run_nibble("run", SMALL, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", check=True)
    want = np.load(tmp_path / "y.npy")
    for feed in (x, [x], (x,), {"input": x}, np.asfortranarray(x)):
        got = m.run(feed)
        assert len(got) == 1 and got[0].dtype == np.float32
        np.testing.assert_array_equal(got[0], want)


def test_integer_models_and_their_dtypes(nibble):
    m = nibble.load(SEED)
    assert m.inputs[0][:2] == ("input", "s8") and [o[0] for o in m.outputs] == ["logits", "scores"]
    x = np.load(SEED.parent / "golden" / "image_a_input_s8.npy")[None]  # the golden image, as a batch of one
    logits, scores = m.run(x)
    np.testing.assert_array_equal(logits.reshape(-1), np.load(SEED.parent / "golden" / "image_a_logits_s32.npy").reshape(-1))
    assert logits.dtype == np.int32 and scores.dtype == np.float32


def test_errors_are_nibble_errors_naming_the_model(nibble, tmp_path):
    m = nibble.load(SMALL)
    cases = [(lambda: m.run(np.zeros((2, 1, 27, 28), np.float32)), "must have shape"),
             (lambda: m.run(np.zeros((2, 1, 28, 28), np.float64)), "f32"),
             (lambda: m.run({"nope": np.zeros((1, 1, 28, 28), np.float32)}), "no input named 'nope'"),
             (lambda: m.run([]), "takes 1 inputs, 0 given"),
             (lambda: m.run("x"), "numpy array"),
             (lambda: m.run(np.zeros((1, 1, 28, 28), np.complex64)), "not supported"),
             (lambda: nibble.load(tmp_path / "none.onnx"), "none.onnx"),
             (lambda: nibble.load(SMALL, "tpu"), "device"),
             (lambda: nibble.calibrate(SEED, np.zeros((1, 3, 224, 224), np.int8)), "model directory"),
             (lambda: nibble.calibrate(SMALL, np.zeros((0, 1, 28, 28), np.float32)), "no inputs"),
             (lambda: nibble.quantize(SMALL, None, tmp_path / "q.nbl"), "calibration table"),
             (lambda: nibble.quantize(SMALL, tmp_path / "none.calib", tmp_path / "missing" / "q.nbl"), "does not exist")]
    for call, needle in cases:
        with pytest.raises(nibble.Error) as e:
            call()
        assert needle in str(e.value) and "\n" not in str(e.value), (needle, str(e.value))
    assert issubclass(nibble.Error, RuntimeError)


class Reader(object):
    """ONNX Runtime's CalibrationDataReader protocol, with or without rewind()."""

    def __init__(self, x, rewind):
        self.x, self.i = x, 0
        if rewind:
            self.rewind = self._rewind

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 40
        return {"input": self.x[self.i - 40:self.i]}

    def _rewind(self):
        self.i = 0


def test_calibrate_and_quantize_match_the_command_line(nibble, run_nibble, images, tmp_path):
    x, y = images
    np.save(tmp_path / "calib.npy", x[:200])
    run_nibble("calibrate", SMALL, "--data", tmp_path / "calib.npy", "--samples", 0, "--method", "percentile:99.99",
               "-o", tmp_path / "cli.calib", check=True)
    cli = nibble.read_calib(str(tmp_path / "cli.calib"))
    # Every form of the data gives the same table, and it is the command line's.
    forms = [x[:200], Reader(x[:200], True), Reader(x[:200], False), [x[i:i + 40] for i in range(0, 200, 40)]]
    for data in forms:
        t = nibble.calibrate(SMALL, data, method="percentile:99.99", precision="int8", batch_size=64)
        assert t.entries == cli.entries, type(data)
    t.write(str(tmp_path / "py.calib"))
    assert nibble.read_calib(str(tmp_path / "py.calib")).entries == cli.entries
    # quantize: the same model directory as the command line's, run by both.
    report = nibble.quantize(SMALL, t, tmp_path / "py.nbl", precision="int4")
    assert len(report) == 12 and {r["precision"] for r in report} == {"int4", "int8"}
    run_nibble("quantize", SMALL, "--calib", tmp_path / "cli.calib", "--precision", "int4", "-o", tmp_path / "cli.nbl",
               check=True)
    np.save(tmp_path / "x.npy", x[:50])
    run_nibble("run", tmp_path / "cli.nbl", "-i", tmp_path / "x.npy", "-o", tmp_path / "cli.npy", check=True)
    np.testing.assert_array_equal(nibble.load(tmp_path / "py.nbl").run(x[:50])[0], np.load(tmp_path / "cli.npy"))
    with pytest.raises(nibble.Error, match="already exists"):
        nibble.quantize(SMALL, t, tmp_path / "py.nbl")
    # GPTQ with Hessians from the data: runs and gives a model of similar accuracy.
    nibble.quantize(SMALL, tmp_path / "cli.calib", tmp_path / "gptq.nbl", precision="int4", gptq=True, data=x[:64])
    plain = nibble.evaluate(tmp_path / "py.nbl", x, y)
    gptq = nibble.evaluate(tmp_path / "gptq.nbl", x, y)
    assert plain["total"] == gptq["total"] == 300 and gptq["top1"] > 0.8 and plain["top1"] > 0.8
    # DPQ: the same model directory as the command line's --dpq.
    nibble.quantize(SMALL, tmp_path / "cli.calib", tmp_path / "dpq.nbl", precision="w4a8-fp8", dpq=True, group_size=16,
                    data=x[:64])
    np.save(tmp_path / "x64.npy", x[:64])
    run_nibble("quantize", SMALL, "--calib", tmp_path / "cli.calib", "--precision", "w4a8-fp8", "--dpq", "--group-size",
               "16", "--data", tmp_path / "x64.npy", "--samples", "64", "-o", tmp_path / "dpq_cli.nbl", check=True)
    for f in (tmp_path / "dpq.nbl" / "npdata").iterdir():
        assert f.read_bytes() == (tmp_path / "dpq_cli.nbl" / "npdata" / f.name).read_bytes(), f.name
    with pytest.raises(nibble.Error, match="w4a8-fp8"):
        nibble.quantize(SMALL, t, tmp_path / "no.nbl", dpq=True, data=x[:64])


def test_evaluate_matches_nibble_eval(nibble, run_nibble, images, tmp_path):
    x, y = images
    np.save(tmp_path / "x.npy", x)
    result = nibble.evaluate(SMALL, x, y, batch_size=64)
    preds = nibble.load(SMALL).run(x)[0].argmax(1)
    assert result == {"top1": float((preds == y).mean()), "correct": int((preds == y).sum()), "total": 300}
    with pytest.raises(nibble.Error, match="labels"):
        nibble.evaluate(SMALL, x, y[:10])


def test_the_engine_releases_the_gil(nibble):
    m = nibble.load(SEED)
    x = np.zeros((4, 3, 224, 224), np.int8)
    m.run(x[:1])  # warm up
    ticks = [0]
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    start = time.time()
    m.run(x)
    elapsed = time.time() - start
    done.set()
    t.join()
    # While the model ran (tens of milliseconds or more), the other thread kept running.
    assert elapsed > 0.02 and ticks[0] >= elapsed / 0.001 / 4, (elapsed, ticks[0])


def test_cpu_threads(nibble):
    before = nibble.cpu_threads()
    nibble.set_cpu_threads(1)
    assert nibble.cpu_threads() == 1
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    one = nibble.load(SMALL).run(x)[0]
    nibble.set_cpu_threads(0)
    assert nibble.cpu_threads() == before
    np.testing.assert_array_equal(nibble.load(SMALL).run(x)[0], one)
