"""Bad input: every case gives one line `nibble: error: <file>: <problem>`, exit 2, no crash."""
import gzip
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper


def assert_one_line_error(proc, file, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"nibble: error: {file}"), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def x_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 1, 6, 6), np.float32))
    return path


def test_missing_model(run_nibble, tmp_path, x_npy):
    path = tmp_path / "nope.onnx"
    assert_one_line_error(run_nibble("run", path, "-i", x_npy), path, "cannot open")


def test_truncated_model(run_nibble, small_cnn, tmp_path, x_npy):
    model, _ = small_cnn
    data = model.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    proc = run_nibble("run", bad, "-i", x_npy)
    assert_one_line_error(proc, bad)


def test_corrupt_model(run_nibble, tmp_path, x_npy):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(bytes(range(256)) * 4)
    assert_one_line_error(run_nibble("inspect", bad), bad)


def test_empty_model(run_nibble, tmp_path):
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    assert_one_line_error(run_nibble("inspect", bad), bad, "empty")


def test_model_failing_the_checker(run_nibble, tmp_path):
    # A node reads a value that nothing defines.
    graph = helper.make_graph([helper.make_node("Relu", ["missing"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    bad = tmp_path / "unchecked.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(bad))
    assert_one_line_error(run_nibble("inspect", bad), bad, "checker")


def test_unsupported_op_names_op_node_and_file(run_nibble, tmp_path, x_npy):
    graph = helper.make_graph([helper.make_node("Sin", ["x"], ["y"], name="my_sin")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 6, 6])])
    path = tmp_path / "sin.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert_one_line_error(run_nibble("run", path, "-i", x_npy), path, "Sin", "my_sin")


def test_wrong_input_shape(run_nibble, small_cnn, tmp_path):
    model, _ = small_cnn
    x = tmp_path / "wrong_shape.npy"
    np.save(x, np.zeros((2, 3, 6, 6), np.float32))
    assert_one_line_error(run_nibble("run", model, "-i", x, "-o", tmp_path / "y.npy"), x, "shape")
    assert not (tmp_path / "y.npy").exists()


def test_wrong_input_dtype(run_nibble, small_cnn, tmp_path):
    model, _ = small_cnn
    x = tmp_path / "wrong_dtype.npy"
    np.save(x, np.zeros((2, 1, 6, 6), np.uint8))
    assert_one_line_error(run_nibble("run", model, "-i", x), x, "u8")


def test_missing_npy(run_nibble, small_cnn, tmp_path):
    model, _ = small_cnn
    x = tmp_path / "absent.npy"
    assert_one_line_error(run_nibble("run", model, "-i", x), x, "cannot open")


def test_truncated_npy(run_nibble, small_cnn, tmp_path, x_npy):
    model, _ = small_cnn
    data = x_npy.read_bytes()
    x = tmp_path / "truncated.npy"
    x.write_bytes(data[:-10])
    assert_one_line_error(run_nibble("run", model, "-i", x), x, "truncated")


def test_malformed_npy_header(run_nibble, small_cnn, tmp_path):
    model, _ = small_cnn
    x = tmp_path / "malformed.npy"
    x.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz'}\n" + b"\0" * 16)
    assert_one_line_error(run_nibble("run", model, "-i", x), x)


def test_not_an_npy(run_nibble, small_cnn, tmp_path):
    model, _ = small_cnn
    x = tmp_path / "text.npy"
    x.write_text("hello world, not numpy")
    assert_one_line_error(run_nibble("run", model, "-i", x), x, "magic")


def copy_dataset(src_dir, dst):
    dst.mkdir()
    for f in src_dir.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def test_truncated_idx(run_nibble, small_cnn, tmp_path):
    from pathlib import Path
    model, _ = small_cnn
    data_dir = copy_dataset(Path("/usr/share/datasets/fashion-mnist"), tmp_path / "fm")
    labels = data_dir / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:5000]))
    proc = run_nibble("eval", model, "--data", "fashion-mnist:test", "--data-dir", data_dir)
    assert_one_line_error(proc, labels, "truncated")


def test_corrupt_gzip_idx(run_nibble, small_cnn, tmp_path):
    from pathlib import Path
    model, _ = small_cnn
    data_dir = copy_dataset(Path("/usr/share/datasets/fashion-mnist"), tmp_path / "fm")
    images = data_dir / "t10k-images-idx3-ubyte.gz"
    raw = images.read_bytes()
    images.write_bytes(raw[: len(raw) // 3])
    proc = run_nibble("eval", model, "--data", "fashion-mnist:test", "--data-dir", data_dir)
    assert_one_line_error(proc, images)


def test_bad_idx_magic(run_nibble, small_cnn, tmp_path):
    model, _ = small_cnn
    data_dir = tmp_path / "fm"
    data_dir.mkdir()
    (data_dir / "t10k-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03" + b"\0" * 12)
    (data_dir / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\0")
    proc = run_nibble("eval", model, "--data-dir", data_dir)
    assert_one_line_error(proc, data_dir / "t10k-images-idx3-ubyte", "magic")


def test_missing_dataset_dir(run_nibble, small_cnn, tmp_path):
    model, _ = small_cnn
    proc = run_nibble("eval", model, "--data-dir", tmp_path / "nowhere")
    assert_one_line_error(proc, tmp_path / "nowhere", "not found")


def test_unknown_dataset(run_nibble, small_cnn):
    model, _ = small_cnn
    assert_one_line_error(run_nibble("eval", model, "--data", "imagenet"), "imagenet", "unknown dataset")


def test_eval_on_model_with_wrong_input_shape(run_nibble, small_cnn):
    # The small CNN takes 6 x 6 images; Fashion-MNIST has 28 x 28.
    model, _ = small_cnn
    assert_one_line_error(run_nibble("eval", model, "--limit", 10), model, "shape")


def test_output_never_half_written(run_nibble, small_cnn, tmp_path, x_npy):
    model, _ = small_cnn
    out = tmp_path / "no_such_dir" / "y.npy"
    proc = run_nibble("run", model, "-i", x_npy, "-o", out)
    assert_one_line_error(proc, out, "cannot write")
    assert list(tmp_path.glob("**/*.tmp.*")) == []


@pytest.mark.parametrize("args,fragments", [
    (["quantize"], ["model is required", "nibble quantize --help"]),
    (["bench", "--batch", "x", "m.onnx"], ["--batch", "nibble bench --help"]),
    (["frob"], ["unknown command 'frob'", "quantize"]),
    ([], ["subcommand is required", "nibble --help"]),
])
def test_command_line_mistakes_are_one_line_errors(run_nibble, args, fragments):
    assert_one_line_error(run_nibble(*args), "", *fragments)


def test_outputs_in_a_missing_directory_fail_before_the_work(run_nibble, small_cnn, tmp_path, x_npy):
    model, _ = small_cnn
    missing = tmp_path / "no" / "such"
    for args, out in [(["run", model, "-i", x_npy, "-o", missing / "y.npy"], missing / "y.npy"),
                      (["calibrate", model, "--data", x_npy, "-o", missing / "t.calib"], missing / "t.calib"),
                      (["quantize", model, "--calib", tmp_path / "none.calib", "-o", missing / "q.nbl"], missing / "q.nbl"),
                      (["bench", model, "--json", missing / "r.json"], missing / "r.json")]:
        assert_one_line_error(run_nibble(*args), out, "does not exist")
