"""The seed's INT4 ResNet-50 through the command line: classify, run, inspect, bench, bad directories."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_cli_errors import assert_one_line_error

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "models" / "mlperf-v0.5-int4-resnet50"
IMAGES = REPO / "data" / "images"

pytestmark = pytest.mark.skipif(not (SEED / "model" / "model").exists(), reason="seed model not found")


def top1_lines(stdout):
    """The first ranked line after each image name."""
    lines = stdout.splitlines()
    return {lines[i]: lines[i + 1].split() for i in range(len(lines)) if not lines[i].startswith(" ")}


def test_classify_photos(run_nibble):
    proc = run_nibble("classify", SEED / "model", IMAGES / "chelsea.png", IMAGES / "coffee.png", "--batch", 2,
                      check=True)
    top = top1_lines(proc.stdout)
    assert top[str(IMAGES / "chelsea.png")][1:3] == ["285", "Egyptian"]
    assert top[str(IMAGES / "coffee.png")][1:2] == ["967"]
    assert proc.stdout.count("  5. ") == 2


def test_run_golden_input_gives_golden_logits(run_nibble, tmp_path):
    run_nibble("run", SEED / "model", "--input", SEED / "golden" / "image_b_input_s8.npy",
               "-o", tmp_path / "logits.npy", "-o", tmp_path / "scores.npy", check=True)
    logits = np.load(tmp_path / "logits.npy")
    assert logits.dtype == np.int32 and logits.shape == (1, 1000)
    np.testing.assert_array_equal(logits[0], np.load(SEED / "golden" / "image_b_logits_s32.npy"))
    assert int(np.load(tmp_path / "scores.npy").argmax()) == 967


def test_inspect_model_dir(run_nibble):
    out = run_nibble("inspect", SEED / "model", check=True).stdout
    assert "nibble:IntConvFused x53" in out
    # ResNet-50 v1.5: 4.09 GMAC per 224 x 224 image.
    assert "MACs: 4089184256 " in out
    conv1 = next(line for line in out.splitlines() if " conv1 " in line)
    assert "[1, 64, 112, 112]" in conv1 and conv1.split()[3] == "u8"


def test_bench_reports_batches(run_nibble):
    out = run_nibble("bench", SEED / "model", "--batch", "1,2", "--duration", "0.1", "--min-runs", 1,
                     check=True).stdout
    heads = [line for line in out.splitlines() if line.startswith("=== Performance summary")]
    assert heads == ["=== Performance summary (offline, batch 1) ===", "=== Performance summary (offline, batch 2) ==="]
    rates = [float(line.split()[3]) for line in out.splitlines() if line.startswith("Throughput:")]
    assert len(rates) == 2 and all(r > 0 for r in rates)


@pytest.fixture
def seed_copy(tmp_path):
    """A private copy of the seed model directory to break."""
    dst = tmp_path / "model"
    shutil.copytree(SEED / "model", dst)
    for f in dst.rglob("*"):
        f.chmod(0o644 if f.is_file() else 0o755)
    return dst


def test_missing_npdata_file(run_nibble, seed_copy):
    (seed_copy / "npdata" / "fc.bias").unlink()
    assert_one_line_error(run_nibble("inspect", seed_copy), seed_copy / "npdata" / "fc.bias")


def test_truncated_npdata_file(run_nibble, seed_copy):
    w = seed_copy / "npdata" / "layer1_0_conv2.weight"
    w.write_bytes(w.read_bytes()[:-7])
    assert_one_line_error(run_nibble("inspect", seed_copy), w, "needs")


def test_malformed_layer_line(run_nibble, seed_copy):
    f = seed_copy / "layer2_1_quantize1"
    f.write_bytes(f.read_bytes().replace(b"shift_bits=16", b"shift_bits 16"))
    assert_one_line_error(run_nibble("inspect", seed_copy), f"{f}:")


def test_unknown_layer_type(run_nibble, seed_copy):
    f = seed_copy / "maxpool"
    f.write_bytes(f.read_bytes().replace(b"MaxPool2d", b"FancyPool2d", 1))
    assert_one_line_error(run_nibble("inspect", seed_copy), f"{f}", "FancyPool2d")


def test_unknown_dtype(run_nibble, seed_copy):
    f = seed_copy / "fc"
    f.write_bytes(f.read_bytes().replace(b"weight=s8,", b"weight=q8,"))
    assert_one_line_error(run_nibble("inspect", seed_copy), f"{f}:", "q8")


def test_missing_root_file(run_nibble, seed_copy):
    (seed_copy / "model").unlink()
    assert_one_line_error(run_nibble("inspect", seed_copy), seed_copy)


def test_wrong_image_file(run_nibble, tmp_path):
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a real jpeg")
    assert_one_line_error(run_nibble("classify", SEED / "model", bad), bad)
