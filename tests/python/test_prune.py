"""`nibble prune --pattern 2:4`: two of every four weights kept along the input channels, the
largest in magnitude; layers that cannot take the pattern reported with the reason."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from test_cli_errors import assert_one_line_error


def model(path):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)    # 3 input channels: dense
    w2 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)    # sparse along its 8 channels
    dw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)    # depthwise: dense
    fc = rng.standard_normal((5, 8)).astype(np.float32)          # Gemm transB: sparse along 8
    mm = rng.standard_normal((5, 6)).astype(np.float32)          # MatMul 5 -> 6: 5 features, dense
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="first", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w2"], ["b"], name="middle", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "dw"], ["c"], name="depthwise", pads=[1, 1, 1, 1], group=8),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["h"], name="fc", transB=1),
             helper.make_node("MatMul", ["h", "mm"], ["y"], name="head")]
    g = helper.make_graph(nodes, "prune", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
                          [numpy_helper.from_array(v, k) for k, v in dict(w1=w1, w2=w2, dw=dw, fc=fc, mm=mm).items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return dict(w1=w1, w2=w2, dw=dw, fc=fc, mm=mm)


def expected_2to4(w, axis):
    """Zero the two smallest magnitudes of every group of 4 along `axis` (stable on ties)."""
    v = np.moveaxis(w, axis, -1).copy()
    groups = v.reshape(*v.shape[:-1], -1, 4)
    order = np.argsort(-np.abs(groups), axis=-1, kind="stable")
    np.put_along_axis(groups, order[..., 2:], 0.0, axis=-1)
    return np.moveaxis(groups.reshape(v.shape), -1, axis)


def test_prune_keeps_the_two_largest_of_four_along_input_channels(run_nibble, tmp_path):
    src = tmp_path / "m.onnx"
    w = model(src)
    out = tmp_path / "pruned.onnx"
    proc = run_nibble("prune", src, "-o", out, check=True)
    report = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert report["first"].endswith("3 input channels, not a multiple of 4")
    assert report["depthwise"].endswith("depthwise")
    assert report["head"].endswith("5 input features, not a multiple of 4")
    assert report["middle"].endswith("sparse") and report["fc"].endswith("sparse")
    assert "2 of 5 conv/linear layers 2:4 sparse" in proc.stdout
    got = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    np.testing.assert_array_equal(got["w2"], expected_2to4(w["w2"], 1))
    np.testing.assert_array_equal(got["fc"], expected_2to4(w["fc"], 1))
    for name in ("w1", "dw", "mm"):
        np.testing.assert_array_equal(got[name], w[name])
    # Exactly two non-zeros in every group of four (random weights have no zeros of their own).
    assert (np.count_nonzero(got["w2"].reshape(8, 2, 4, 9), axis=2) == 2).all()
    # The pruned model runs.
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32))
    run_nibble("run", out, "-i", x, "-o", tmp_path / "y.npy", check=True)


def test_prune_exclude_and_errors(run_nibble, tmp_path):
    src = tmp_path / "m.onnx"
    model(src)
    out = tmp_path / "p.onnx"
    proc = run_nibble("prune", src, "--exclude", "fc", "-o", out, check=True)
    assert "1 of 5 conv/linear layers 2:4 sparse" in proc.stdout
    assert_one_line_error(run_nibble("prune", src, "--pattern", "1:4", "-o", tmp_path / "q.onnx"), "--pattern", "1:4")
    assert_one_line_error(run_nibble("prune", src, "-o", out), out, "exists")
    assert_one_line_error(run_nibble("prune", src, "--exclude", "nope", "-o", tmp_path / "r.onnx"), "--exclude", "nope")
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "r.onnx").exists()


def test_quantize_keeps_the_pattern_and_records_it(run_nibble, tmp_path):
    src = tmp_path / "m.onnx"
    model(src)
    pruned = tmp_path / "pruned.onnx"
    run_nibble("prune", src, "-o", pruned, check=True)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(2).standard_normal((16, 3, 6, 6)).astype(np.float32))
    table = tmp_path / "t.calib"
    run_nibble("calibrate", pruned, "--data", x, "--samples", 0, "-o", table, check=True)
    for gptq in ([], ["--gptq", "--data", str(x), "--samples", "16"]):
        q = tmp_path / ("q_gptq" if gptq else "q")
        run_nibble("quantize", pruned, "--calib", table, *gptq, "-o", q, check=True)
        files = {f.name: f.read_text() for f in q.iterdir() if f.is_file()}
        sparse = sorted(name for name, text in files.items() if "sparsity=2:2 4" in text.splitlines())
        assert sparse == ["fc", "middle"], sparse
        w = np.fromfile(q / "npdata" / "middle.weight", np.int8).reshape(8, 2, 4, 9)
        assert (np.count_nonzero(w, axis=2) <= 2).all()
        run_nibble("run", q, "-i", x, "-o", tmp_path / "y.npy", check=True)
    # A declared pattern the weights do not hold is refused when the model is read.
    w = np.fromfile(q / "npdata" / "middle.weight", np.int8)
    w[:] = 1
    w.tofile(q / "npdata" / "middle.weight")
    assert_one_line_error(run_nibble("run", q, "-i", x, "-o", tmp_path / "z.npy"), q / "middle", "declares 2:4 sparsity")
