"""`nibble run`, `nibble inspect` and `nibble classify`: small generated models checked against numpy, and
image classifiers on the demo photos."""
from pathlib import Path

import numpy as np

from conftest import small_cnn_reference

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_run_matches_numpy(run_nibble, small_cnn, tmp_path):
    model, params = small_cnn
    x = np.random.default_rng(1).standard_normal((5, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = run_nibble("run", model, "--input", tmp_path / "x.npy", "-o", tmp_path / "y.npy", check=True)
    assert "y: f32 [5, 3]" in out.stdout
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32 and y.shape == (5, 3)
    np.testing.assert_allclose(y, small_cnn_reference(x, params), rtol=1e-4, atol=1e-5)


def test_run_accepts_named_input_and_any_batch(run_nibble, small_cnn, tmp_path):
    model, params = small_cnn
    x = np.random.default_rng(2).standard_normal((1, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_nibble("run", model, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "y.npy", check=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), small_cnn_reference(x, params), rtol=1e-4, atol=1e-5)


def test_inspect_reports_shapes_params_and_macs(run_nibble, small_cnn):
    model, _ = small_cnn
    out = run_nibble("inspect", model, check=True).stdout
    # Conv: 4 x 6 x 6 outputs, 9 MACs each; Gemm: 3 outputs x 4.
    assert "[1, 4, 6, 6]" in out
    conv_line = next(line for line in out.splitlines() if " conv " in line)
    assert conv_line.split()[-3:] == ["40", "160", str(4 * 36 * 9)]
    assert f"MACs: {4 * 36 * 9 + 12} " in out
    assert "parameters: 55 " in out
    assert "every op is supported" in out


def test_inspect_batch_scales_macs(run_nibble, small_cnn):
    model, _ = small_cnn
    out = run_nibble("inspect", model, "--batch", 8, check=True).stdout
    assert f"MACs: {8 * (4 * 36 * 9 + 12)} " in out


def test_help_on_every_subcommand(run_nibble):
    top = run_nibble("--help")
    assert top.returncode == 0
    for sub in ("inspect", "run", "eval", "classify", "bench"):
        assert sub in top.stdout
        proc = run_nibble(sub, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, sub


def test_classify_any_image_classifier(run_nibble, tmp_path):
    """classify takes ONNX and quantized models of one f32 image input with their preprocessing
    (here the Fashion-MNIST model, grey 28 x 28 images), and names classes from --classes."""
    model = REPO_ROOT / "models" / "fmnist_resnet.onnx"
    photos = [REPO_ROOT / "data" / "images" / p for p in ("coffee.png", "rocket.jpg")]
    names = tmp_path / "fmnist.txt"
    names.write_text("\n".join(["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                "Bag", "Ankle boot"]) + "\n")
    out = run_nibble("classify", model, *photos, "--classes", names, "--top", 2, check=True).stdout
    assert out.count("1. ") == 2 and "score" in out
    plain = run_nibble("classify", model, *photos, "--top", 1, check=True).stdout
    assert "class " in plain  # 10 classes: the ImageNet names do not apply
    run_nibble("calibrate", model, "--samples", 200, "-o", tmp_path / "m.calib", check=True)
    run_nibble("quantize", model, "--calib", tmp_path / "m.calib", "-o", tmp_path / "m.nbl", check=True)
    q = run_nibble("classify", tmp_path / "m.nbl", *photos, "--classes", names, "--top", 1, check=True).stdout
    top = [line.split()[1] for line in out.splitlines() if line.strip().startswith("1.")]
    assert top == [line.split()[1] for line in q.splitlines() if line.strip().startswith("1.")]
    bad = run_nibble("classify", model, photos[0], "--classes", REPO_ROOT / "data" / "imagenet_classes.txt")
    assert bad.returncode == 2 and "1000 class names but the model scores 10 classes" in bad.stderr
