"""`nibble run` and `nibble inspect` on small generated models, checked against numpy."""
import numpy as np

from conftest import small_cnn_reference


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
