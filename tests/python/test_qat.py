"""nibble_qat: the fake-quantized PyTorch model against the C++ engine, fine-tuning, resuming and
the CLI's errors. CPU only; a short fine-tune on a subset of Fashion-MNIST."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))

import nibble_qat  # noqa: E402
from conftest import calibrate  # noqa: E402
from nibble_qat import arith, data, graph, onnx_io, train  # noqa: E402
from nibble_qat import calib as calib_io  # noqa: E402

SMALL = REPO / "models" / "fmnist_resnet.onnx"
RESNET18 = REPO / "models" / "fmnist_resnet18.onnx"
CASES = REPO / "tests" / "data" / "requant_cases.txt"


def qat_cli(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(REPO / "python"))
    return subprocess.run([sys.executable, "-m", "nibble_qat", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def nb(run_nibble):
    """nibble ARGS..., which must succeed; returns its stdout."""
    return lambda *args: run_nibble(*args, check=True).stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("qat")


@pytest.fixture(scope="module")
def small_calib(work, nibble_bin):
    return calibrate(nibble_bin, SMALL, work / "small.calib", 200, "percentile:99.999")


@pytest.fixture(scope="module")
def r18_calib(work, nibble_bin):
    return calibrate(nibble_bin, RESNET18, work / "r18.calib", 100, "percentile:99.999")


def engine_logits(nb, nbl, x, tmp):
    np.save(tmp / "x.npy", x.numpy())
    nb("run", nbl, "-i", tmp / "x.npy", "-o", tmp / "y.npy")
    return np.load(tmp / "y.npy")


def exact_logits(model, x):
    model.exact = True
    try:
        with torch.no_grad():
            return model(x).numpy()
    finally:
        model.exact = False


def test_requantization_matches_the_shared_vectors():
    """The same vectors tests/cpp/test_requant_cases.cpp checks the engine against."""
    n_req = n_choose = n_limit = 0
    for line in CASES.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        kind, *f = line.split()
        if kind == "requant":
            x, factor, shift, bits, sg, want = map(int, f)
            rng = arith.output_range(bits, bool(sg))
            got = arith.requantize_exact(torch.tensor([[float(x)]], dtype=torch.float64),
                                         torch.tensor([float(factor)], dtype=torch.float64),
                                         torch.tensor(float(shift), dtype=torch.float64), rng)
            assert int(got.item()) == want, line
            n_req += 1
        elif kind == "limit":
            bits, sg, want = map(int, f)
            assert arith.saturation_shift_limit(arith.output_range(bits, bool(sg))) == want, line
            n_limit += 1
        else:
            limit = 31
            if kind == "choose_at_most":
                limit = int(f.pop(0))
            ratios = torch.tensor([float(v) for v in f[0].split(",")], dtype=torch.float64)
            shift, factor, fits = arith.choose_requant(ratios, limit)
            if f[1] == "none":
                assert not bool(fits), line
            else:
                assert bool(fits) and int(shift) == int(f[1]), line
                assert [int(v) for v in factor] == [int(v) for v in f[2].split(",")], line
            n_choose += 1
    assert n_req > 400 and n_choose > 90 and n_limit == 12


def test_float32_training_form_rounds_like_the_exact_one():
    """Away from exact ties the f32 formula gives the exact results."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-2 ** 20, 2 ** 20, (64, 8), generator=gen).to(torch.float64)
    factor = torch.randint(1, 65536, (8,), generator=gen).to(torch.float64)
    shift = torch.tensor(21.0, dtype=torch.float64)
    exact = arith.requantize_exact(x, factor, shift, (-127, 127))
    f32 = arith.requantize_exact(x.float(), factor, shift, (-127, 127)).double()
    ties = ((x.abs() * factor.view(1, -1)) % 2 ** 21) == 2 ** 20
    assert torch.equal(exact[~ties], f32[~ties])


def _separate_steps(conv, bias, ratio, factor, shift, rng, relu, residual):
    """conv_epilogue's chain as separate autograd operations (the unfused forward pass)."""
    shape = [1, -1] + [1] * (conv.dim() - 2)
    acc = arith.round_ste(conv) + bias.view(shape)
    if residual is not None:
        src, res_ratio, stages = residual
        acc = acc + arith.requantize(src, res_ratio, stages, arith.INT32_RANGE)
    if relu:
        acc = torch.relu(acc)
    return arith.requantize(acc, ratio, [(factor, shift, arith.INT32_RANGE)], rng)


@pytest.mark.parametrize("relu,residual,pre", [(True, True, False), (True, True, True), (False, False, False)])
def test_fused_epilogue_equals_the_separate_steps(relu, residual, pre):
    """Values and every gradient (conv, bias, both ratios, residual) of the one-node epilogue
    equal those of the separate operations, also for a two-stage residual rescale."""
    gen = torch.Generator().manual_seed(1)
    c = 6
    conv = (torch.randint(-3000, 3000, (4, c, 5, 5), generator=gen).float() +
            0.01 * torch.randn(4, c, 5, 5, generator=gen))
    bias = torch.randint(-200, 200, (c,), generator=gen).float()
    ratio = torch.rand(c, generator=gen, dtype=torch.float64) * 0.01 + 0.001
    rng = (0, 15) if relu else (-7, 7)
    shift, factor, fits = arith.choose_requant(ratio)
    assert bool(fits)
    res = None
    if residual:
        src = torch.randint(0, 16, (4, c, 5, 5), generator=gen).float()
        # A ratio beyond 16 bits needs the integer pre-multiply (residual_stages' second form).
        res_ratio = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5) * (1e6 if pre else 30.0)
        res = (src, res_ratio, arith.residual_stages(res_ratio))
        assert bool((res[2][0][0] > 1).all()) == pre
    grads = []
    outs = []
    for fn in (arith.conv_epilogue, _separate_steps):
        leaves = [conv.clone().requires_grad_(), bias.clone().requires_grad_(), ratio.clone().requires_grad_()]
        r = None
        if res is not None:
            leaves += [res[0].clone().requires_grad_(), res[1].clone().requires_grad_()]
            r = (leaves[3], leaves[4], res[2])
        y = fn(leaves[0], leaves[1], leaves[2], factor, shift, rng, relu, r)
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append([t.grad for t in leaves])
    assert torch.equal(outs[0], outs[1])
    assert outs[0].min() >= rng[0] and outs[0].max() <= rng[1] and len(outs[0].unique()) > 3
    for a, b in zip(*grads):
        assert a is not None and b is not None and a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max())), (a - b).abs().max()


def test_fused_forward_pass_equals_the_unfused_one(r18_calib):
    """The whole float32 training forward and backward pass, with learned ranges and residuals."""
    model = nibble_qat.load(RESNET18, r18_calib, "int4", learn_ranges=True)
    x = torch.rand((4,) + model.input_shape, generator=torch.Generator().manual_seed(2))
    runs = []
    for fused in (True, False):
        model.fused = fused
        model.zero_grad(set_to_none=True)
        y = model(x)
        torch.nn.functional.cross_entropy(y, torch.arange(4)).backward()
        runs.append((y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert torch.equal(runs[0][0], runs[1][0])
    assert sorted(runs[0][1]) == sorted(runs[1][1]) and any(n.startswith("thresholds.") for n in runs[0][1])
    for n, g in runs[0][1].items():
        ref = runs[1][1][n]
        assert torch.allclose(g, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max())), n


def test_onnx_reader_round_trips_the_file_byte_for_byte():
    m = onnx_io.load(SMALL)
    assert m.save(None, {}) == SMALL.read_bytes()
    assert [v[0] for v in m.inputs] == ["input"] and m.outputs == ["logits"]
    w = m.initializers["fc.weight"]
    changed = onnx_io.from_bytes(m.save(None, {"fc.weight": w * 2}))
    assert np.array_equal(changed.initializers["fc.weight"], w * 2)
    assert all(np.array_equal(changed.initializers[k], v) for k, v in m.initializers.items() if k != "fc.weight")


@pytest.mark.parametrize("precision", ["int8", "w4a8", "int4"])
def test_fake_quant_model_equals_the_engine(precision, work, small_calib, nb):
    """Without training: the exact mode is bit for bit `nibble quantize` + `nibble run`."""
    nbl = work / f"small_{precision}.nbl"
    nb("quantize", SMALL, "--calib", small_calib, "--precision", precision, "-o", nbl)
    model = nibble_qat.load(SMALL, small_calib, precision)
    images, _ = data.load_split(data.DEFAULT_DIR, "test")
    x = data.to_input(images[:300], 28, "cpu")
    ref = engine_logits(nb, nbl, x, work)
    assert np.array_equal(exact_logits(model, x), ref)
    with torch.no_grad():  # the float32 training form: the same arithmetic, f32 products
        fast = model(x).numpy()
    assert (fast.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_shortcut_sums_are_simulated_as_quantize_takes_them(work, small_calib, nb):
    """quantize --shortcut-sums (downsampling convs hand over their 32-bit sums) against the
    fake-quantized model built the same way, and the default differs from it."""
    nbl = work / "small_sums.nbl"
    nb("quantize", SMALL, "--calib", small_calib, "--precision", "int8", "--shortcut-sums", "-o", nbl)
    model = nibble_qat.load(SMALL, small_calib, "int8", requantize_shortcuts=False)
    assert any(u.residual_only for u in model.units)
    assert not any(u.residual_only for u in nibble_qat.load(SMALL, small_calib, "int8").units)
    images, _ = data.load_split(data.DEFAULT_DIR, "test")
    x = data.to_input(images[:300], 28, "cpu")
    assert np.array_equal(exact_logits(model, x), engine_logits(nb, nbl, x, work))


def test_dead_channels_are_zeroed_on_both_sides(work, r18_calib, nb):
    """A channel too small for its residual's scale gets weight 0 and scale 1 in the engine and in
    PyTorch alike (instead of the whole layer turning float)."""
    calib = r18_calib
    m = onnx_io.load(RESNET18)
    w = m.initializers["layer4.1.conv2.weight"].copy()
    w[3] *= 1e-12
    w[7] = 1e-20
    model_path = work / "dead.onnx"
    model_path.write_bytes(m.save(None, {"layer4.1.conv2.weight": w}))
    nbl = work / "dead.nbl"
    out = nb("quantize", model_path, "--calib", calib, "--precision", "int4", "-o", nbl)
    assert "layer4_layer4_1_conv2" in out and "float" not in out.split("layer4_layer4_1_conv2")[1].split("\n")[0]
    model = nibble_qat.load(model_path, calib, "int4")
    images, _ = data.load_split(data.DEFAULT_DIR, "test")
    x = data.to_input(images[:100], 28, "cpu")
    assert np.array_equal(exact_logits(model, x), engine_logits(nb, nbl, x, work))


def test_finetune_cli_output_runs_on_the_engine_with_the_same_predictions(work, small_calib, nb):
    """The CI fine-tune: 192 steps on 2048 images, then engine against PyTorch on 2000 test images."""
    out = work / "ft"
    proc = qat_cli("finetune", SMALL, "--calib", small_calib, "--precision", "int4", "--epochs", 12,
                   "--limit-train", 2048, "--limit-test", 500, "--learn-ranges", "--threads", 2, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 12/12" in proc.stdout and "nibble quantize" in proc.stdout
    assert "step mode eager" in proc.stdout  # the default (auto) on a CPU
    assert "%" in proc.stderr  # progress
    for f in ("model.onnx", "model.calib", "checkpoint.pt", "finetune.json"):
        assert (out / f).exists()
    assert "ranges after 12 epochs" in (out / "model.calib").read_text()
    nbl = out / "model.nbl"
    nb("quantize", out / "model.onnx", "--calib", out / "model.calib", "--precision", "int4", "-o", nbl)
    model = nibble_qat.load(out / "model.onnx", out / "model.calib", "int4")
    images, labels = data.load_split(data.DEFAULT_DIR, "test")
    n = 2000
    nb("eval", nbl, "--limit", n, "--predictions", work / "pred.npy")
    engine_pred = np.load(work / "pred.npy")
    correct, logits = train.evaluate(model, images[:n], labels[:n], "cpu", exact=True)
    agree = (logits.argmax(1).numpy() == engine_pred).mean()
    assert agree >= 0.999
    x = data.to_input(images[:500], 28, "cpu")
    ref = engine_logits(nb, nbl, x, work)
    step = next(iter(model.output_step.values())).numpy()
    assert np.max(np.abs(logits[:500].numpy().astype(np.float64) - ref) / step) <= 1.0
    assert np.array_equal(logits[:500].numpy(), ref)


def test_resume_gives_the_same_model_as_an_uninterrupted_run(work, small_calib):
    kw = dict(epochs=2, batch_size=64, limit_train=256, limit_test=100)
    settings = {"case": "resume"}
    whole = work / "whole"
    train.finetune(nibble_qat.load(SMALL, small_calib, "int4"), str(whole), settings=settings, log=lambda s: None,
                   **kw)

    class Stop(Exception):
        pass

    def stop_after_first(line):
        if line.startswith("epoch  1/2"):
            raise Stop

    part = work / "part"
    with pytest.raises(Stop):
        train.finetune(nibble_qat.load(SMALL, small_calib, "int4"), str(part), settings=settings,
                       log=stop_after_first, **kw)
    with pytest.raises(FileExistsError):
        train.finetune(nibble_qat.load(SMALL, small_calib, "int4"), str(part), settings=settings,
                       log=lambda s: None, **kw)
    lines = []
    train.finetune(nibble_qat.load(SMALL, small_calib, "int4"), str(part), settings=settings, resume=True,
                   log=lines.append, **kw)
    assert any(s.startswith("resumed") for s in lines) and any(s.startswith("epoch  2/2") for s in lines)
    assert (part / "model.onnx").read_bytes() == (whole / "model.onnx").read_bytes()
    assert (part / "model.calib").read_text() == (whole / "model.calib").read_text()
    with pytest.raises(ValueError, match="other settings"):
        train.finetune(nibble_qat.load(SMALL, small_calib, "int4"), str(part), settings={"case": "other"},
                       resume=True, log=lambda s: None, **kw)
    with pytest.raises(ValueError, match="other settings"):
        train.finetune(nibble_qat.load(SMALL, small_calib, "int4"), str(part), settings=None, resume=True,
                       log=lambda s: None, **kw)


def test_distillation_teacher_is_the_fp32_model(work, small_calib):
    """Precision "float" is the FP32 model (its stored PyTorch predictions), and a distilled
    fine-tune runs and records its weight."""
    teacher = nibble_qat.load(SMALL, small_calib, "float")
    assert len(teacher.thresholds) == 0
    images, _ = data.load_split(data.DEFAULT_DIR, "test")
    with torch.no_grad():
        pred = teacher(data.to_input(images[:1000], 28, "cpu")).argmax(1).numpy()
    stored = np.load(os.path.join(os.path.dirname(SMALL), "fmnist_resnet_test_predictions.npy"))
    assert (pred == stored[:1000]).mean() >= 0.999
    out = work / "kd"
    hist = train.finetune(nibble_qat.load(SMALL, small_calib, "int4"), str(out), epochs=1, batch_size=32,
                          max_steps=3, limit_test=100, teacher=teacher, distill=0.5,
                          settings={"distill": 0.5}, log=lambda s: None)
    assert hist[-1]["steps"] == 3 and (out / "model.onnx").exists()
    with pytest.raises(ValueError, match="teacher"):
        train.finetune(nibble_qat.load(SMALL, small_calib, "int4"), str(work / "kd2"), distill=0.5,
                       log=lambda s: None)


def test_a_torch_module_at_another_input_size(work, nb):
    """A torch.nn.Module (exported for nibble calibrate) at 36 x 36: Fashion-MNIST is resized the same
    way by nibble and nibble_qat, so their predictions agree."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    onnx_path = work / "net36.onnx"
    nibble_qat.export_module(net, torch.zeros(1, 1, 36, 36), str(onnx_path))
    calib = work / "net36.calib"
    nb("calibrate", onnx_path, "--samples", 100, "--method", "percentile:99.999", "-o", calib)
    from_module = nibble_qat.from_module(net, torch.zeros(1, 1, 36, 36), calib, "int8")
    from_file = nibble_qat.load(onnx_path, calib, "int8")
    images, labels = data.load_split(data.DEFAULT_DIR, "test")
    x = data.to_input(images[:200], 36, "cpu")
    assert x.shape == (200, 1, 36, 36)
    assert np.array_equal(exact_logits(from_module, x), exact_logits(from_file, x))
    nbl = work / "net36.nbl"
    nb("quantize", onnx_path, "--calib", calib, "--precision", "int8", "-o", nbl)
    nb("eval", nbl, "--limit", 200, "--predictions", work / "p36.npy")
    assert np.array_equal(np.load(work / "p36.npy"), exact_logits(from_file, x).argmax(1))


def test_cli_errors_are_one_line_and_exit_2(work, small_calib):
    bad_onnx = work / "bad.onnx"
    bad_onnx.write_bytes(b"\x0a\xff\xff\xff\xff\x0f garbage")
    bad_calib = work / "bad.calib"
    bad_calib.write_text("input max 0\n")
    missing_tensor = work / "missing.calib"
    missing_tensor.write_text("nope max 0 1\n")
    taken = work / "taken"
    taken.mkdir()
    (taken / "checkpoint.pt").write_bytes(b"x")
    cases = [
        (["finetune", work / "none.onnx", "--calib", small_calib, "-o", work / "o1"], "none.onnx"),
        (["finetune", bad_onnx, "--calib", small_calib, "-o", work / "o2"], "bad.onnx"),
        (["finetune", SMALL, "--calib", work / "none.calib", "-o", work / "o3"], "none.calib"),
        (["finetune", SMALL, "--calib", bad_calib, "-o", work / "o4"], "bad.calib:1"),
        (["finetune", SMALL, "--calib", missing_tensor, "-o", work / "o5"], "nope"),
        (["finetune", SMALL, "--calib", small_calib, "--data-dir", work, "-o", work / "o6"], "no such file"),
        (["finetune", SMALL, "--calib", small_calib, "--epochs", 0, "-o", work / "o7"], "--epochs"),
        (["finetune", SMALL, "--calib", small_calib, "--layer-precision", "nolayer:int4", "-o", work / "o8"],
         "nolayer"),
        (["finetune", SMALL, "--calib", small_calib, "-o", taken], "--resume"),
        (["finetune", SMALL, "--calib", small_calib, "--resume", "-o", taken], "not a readable checkpoint"),
        (["finetune", SMALL, "--calib", small_calib, "--distill", 1.5, "-o", work / "o9"], "--distill"),
        (["finetune", SMALL, "--calib", small_calib, "--step-mode", "graphed", "-o", work / "o10"], "CUDA"),
        (["finetune", SMALL, "--precision", "int8", "-o", work / "o11"], "--calib"),
        (["finetune", SMALL, "--precision", "float", "--sparsity", "2:4", "-o", work / "o12"], "nibble prune"),
    ]
    for args, needle in cases:
        proc = qat_cli(*args, timeout=300)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nibble_qat: error:") and needle in lines[0], (args, lines)
        assert "Traceback" not in proc.stderr


def test_step_mode_auto_and_its_limits():
    """auto is graphed where CUDA and PyTorch 2 are, eager elsewhere and when the training set is
    smaller than one batch (a CUDA graph replays one batch shape); the explicit modes are checked."""
    fast = hasattr(torch, "compile")
    assert train.check_step_mode("auto", "cpu") == "eager"
    assert train.check_step_mode("auto", "cuda", 64, 6400) == ("graphed" if fast else "eager")
    assert train.check_step_mode("auto", "cuda", 64, 10) == "eager"
    assert train.check_step_mode("eager", "cuda", 64, 10) == "eager"
    with pytest.raises(ValueError, match="step mode 'fast'"):
        train.check_step_mode("fast", "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        train.check_step_mode("compiled", "cpu")
    if fast:
        assert train.check_step_mode("graphed", "cuda", 64, 64) == "graphed"
        with pytest.raises(ValueError, match="whole batch"):
            train.check_step_mode("graphed", "cuda", 64, 10)


def test_step_time_tool_compares_the_variants(work, small_calib):
    """tools/qat_step_time.py on the CPU, with learned ranges and distillation: the fused step gives
    the separate operations' logits and gradients; a bad --distill is a usage error."""
    tool = [sys.executable, str(REPO / "tools" / "qat_step_time.py"), str(SMALL), str(small_calib), "--device", "cpu",
            "--batch-size", "8", "--steps", "2", "--warmup", "1", "--learn-ranges"]
    out = work / "step_time.json"
    proc = subprocess.run(tool + ["--distill", "0.5", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(out.read_text())
    rows = {r["variant"]: r for r in info["rows"]}
    assert sorted(rows) == ["fused", "unfused"] and info["distill"] == 0.5
    fused = rows["fused"]
    assert fused["max_logit_difference"] == 0.0 and fused["top1_agreement"] == 1.0
    assert fused["same_parameters_with_gradients"] and fused["max_relative_grad_difference"] < 1e-4
    assert fused["ms_per_step"] > 0 and "fused" in proc.stdout
    bad = subprocess.run(tool + ["--distill", "2"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--distill" in bad.stderr


def test_unsupported_op_is_named(work, small_calib):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Softmax", ["input"], ["logits"], name="sm")], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])])
    path = work / "softmax.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    calib = work / "softmax.calib"
    calib.write_text("input max 0 1\n")
    proc = qat_cli("finetune", path, "--calib", calib, "-o", work / "o9")
    assert proc.returncode == 2 and "Softmax" in proc.stderr and "softmax.onnx" in proc.stderr


def test_help_names_the_next_step():
    proc = qat_cli("finetune", "--help")
    assert proc.returncode == 0 and "nibble quantize" in proc.stdout and "--resume" in proc.stdout


def test_eval_device_flag(work, small_calib, run_nibble, nb):
    """`nibble eval --device cuda` (what the GPU runs use) is a one-line error without a GPU."""
    nbl = work / "dev.nbl"
    nb("quantize", SMALL, "--calib", small_calib, "--precision", "int8", "-o", nbl)
    bad = run_nibble("eval", nbl, "--limit", 10, "--device", "tpu")
    assert bad.returncode == 2 and "--device" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    if not Path("/dev/nvidia0").exists():
        proc = run_nibble("eval", nbl, "--limit", 10, "--device", "cuda")
        assert proc.returncode == 2 and "CUDA" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available() or not hasattr(torch, "compile"),
                    reason="needs a CUDA device and PyTorch 2")
def test_compiled_and_graphed_steps_match_eager_on_cuda(r18_calib):
    """Step modes on a GPU: the compiled epilogues and the CUDA-graphed step give the eager step's
    logits and gradients, and a graphed step sees new inputs and weights updated in place."""
    dev = train.training_device("cuda")
    gen = torch.Generator().manual_seed(3)
    xs = [torch.rand((32, 1, 28, 28), generator=gen).to(dev) for _ in range(2)]
    y = torch.arange(32, device=dev) % 10

    def two_steps(mode):
        torch.manual_seed(0)
        model = nibble_qat.load(RESNET18, r18_calib, "int4", learn_ranges=True).to(dev)
        run = train.step_function(model, mode, xs[0])
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        out = []
        for x in xs:
            opt.zero_grad(set_to_none=True)
            logits = run(x)
            torch.nn.functional.cross_entropy(logits, y).backward()
            out.append((logits.detach().clone(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                  if p.grad is not None}))
            opt.step()
        assert not arith.KERNELS.failed
        return out

    ref = two_steps("eager")
    for mode in ("compiled", "graphed"):
        got = two_steps(mode)
        for (l0, g0), (l1, g1) in zip(ref, got):
            # A fused product and sum may round differently next to a tie: nearly all logits equal.
            assert (l0 == l1).float().mean() >= 0.95, mode
            assert (l0.argmax(1) == l1.argmax(1)).float().mean() >= 0.95, mode
            assert sorted(g0) == sorted(g1), mode
            for n in g0:
                assert torch.allclose(g1[n], g0[n], rtol=0.05, atol=0.05 * float(g0[n].abs().max())), (mode, n)


@pytest.mark.skipif(not torch.cuda.is_available() or not hasattr(torch, "compile"),
                    reason="needs a CUDA device and PyTorch 2")
def test_graphed_teacher_matches_eager_on_cuda(work, r18_calib):
    """The distillation teacher replayed as a CUDA graph gives its eager logits for new inputs,
    and a graphed fine-tune with distillation runs through and says what it captured."""
    dev = train.training_device("cuda")
    teacher = graph.QatModel(onnx_io.load(RESNET18), calib_io.read(r18_calib), "float")
    teacher = teacher.to(dev).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(5)
    xs = [torch.rand((16, 1, 28, 28), generator=gen).to(dev) for _ in range(3)]
    run = train.teacher_function(teacher, "graphed", xs[0])
    assert train.teacher_function(teacher, "eager", xs[0]) is teacher
    for x in xs[1:]:
        got = run(x).clone()
        with torch.no_grad():
            want = teacher(x)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        assert torch.equal(got.argmax(1), want.argmax(1))
    out = work / "kd_graphed"
    proc = qat_cli("finetune", RESNET18, "--calib", r18_calib, "--precision", "int4", "--epochs", 1, "--max-steps", 20,
                   "--limit-train", 2048, "--limit-test", 200, "--distill", 0.5, "--device", "cuda", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "step mode graphed: captured the training step and the teacher's forward pass" in proc.stdout
    assert (out / "model.onnx").exists() and (out / "model.calib").exists()
    # --eager-teacher keeps the teacher out of the graphs: the same steps from the same start.
    eager_out = work / "kd_graphed_eager_teacher"
    proc = qat_cli("finetune", RESNET18, "--calib", r18_calib, "--precision", "int4", "--epochs", 1, "--max-steps", 20,
                   "--limit-train", 2048, "--limit-test", 200, "--distill", 0.5, "--device", "cuda", "--eager-teacher",
                   "-o", eager_out)
    assert proc.returncode == 0, proc.stderr
    assert "step mode graphed: captured the training step as CUDA graphs" in proc.stdout
    losses = [json.loads((d / "finetune.json").read_text())["history"][-1]["train_loss"] for d in (out, eager_out)]
    assert abs(losses[0] - losses[1]) <= 1e-3 * abs(losses[1]), losses


def _sparse_layers(path):
    """{weight name: array} of the conv and Gemm weights of an ONNX file that are 2:4 sparse along
    their input channels."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    weights = {n.input[1] for n in m.graph.node if n.op_type in ("Conv", "Gemm")}
    out = {}
    for t in m.graph.initializer:
        if t.name not in weights:
            continue
        w = numpy_helper.to_array(t)
        w3 = w.reshape(w.shape[0], w.shape[1], -1)
        if w3.shape[1] % 4 == 0 and (np.count_nonzero(w3.reshape(w3.shape[0], -1, 4, w3.shape[2]), axis=2) <= 2).all():
            out[t.name] = w
    return out


def test_sparse_finetuning_keeps_the_pruned_zeros(work, nb):
    """The seed's 2:4 workflow: prune, fine-tune the sparse model in FP32 (--precision float), then
    quantization-aware fine-tuning; every step keeps exactly the pruned zeros, and quantize
    records the pattern."""
    pruned = work / "pruned.onnx"
    nb("prune", SMALL, "--pattern", "2:4", "-o", pruned)
    before = _sparse_layers(pruned)
    assert len(before) == 11  # every layer but the 1-channel stem
    fp32 = work / "sparse_fp32"
    proc = qat_cli("finetune", pruned, "--precision", "float", "--sparsity", "2:4", "--epochs", 1, "--max-steps", 8,
                   "--limit-train", 1024, "--limit-test", 200, "--threads", 2, "-o", fp32)
    assert proc.returncode == 0, proc.stderr
    assert "11 layers keep their zeros" in proc.stdout
    assert not (fp32 / "model.calib").exists()  # float: calibrate the fine-tuned model again
    after = _sparse_layers(fp32 / "model.onnx")
    assert sorted(after) == sorted(before)
    for name, w in before.items():
        np.testing.assert_array_equal(after[name] == 0, w == 0, err_msg=name)
    assert any(not np.array_equal(after[n], before[n]) for n in before)  # it trained
    table = work / "sparse.calib"
    nb("calibrate", fp32 / "model.onnx", "--samples", 200, "--method", "percentile:99.999", "--precision", "int8",
       "-o", table)
    qat = work / "sparse_qat"
    proc = qat_cli("finetune", fp32 / "model.onnx", "--calib", table, "--precision", "int8", "--sparsity", "2:4",
                   "--epochs", 1, "--max-steps", 8, "--limit-train", 1024, "--limit-test", 200, "--threads", 2, "-o", qat)
    assert proc.returncode == 0, proc.stderr
    final = _sparse_layers(qat / "model.onnx")
    for name, w in before.items():
        np.testing.assert_array_equal(final[name] == 0, w == 0, err_msg=name)
    nbl = work / "sparse_qat.nbl"
    out = nb("quantize", qat / "model.onnx", "--calib", qat / "model.calib", "--precision", "int8", "-o", nbl)
    assert "wrote" in out
    layers = [p for p in nbl.iterdir() if p.is_file() and "sparsity=2:2 4" in p.read_text(errors="ignore")]
    assert len(layers) == 11


def test_finetune_on_an_image_folder(work, small_calib, nb):
    """--data DIR: class subfolders of images (here Fashion-MNIST test images saved as PNG), a
    tenth of each class held out for testing; the result quantizes and runs like any other."""
    from PIL import Image
    images, labels = data.load_split(data.DEFAULT_DIR, "test")
    folder = work / "folder"
    for i in range(200):
        d = folder / f"c{labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i:04d}.png")
    got = data.image_folders(str(folder), "", (1, 28, 28))
    assert got.classes == [f"c{k}" for k in range(10)]
    assert len(got.train_y) + len(got.test_y) == 200 and 10 <= len(got.test_y) <= 30
    # The images come back as they were saved (28 x 28 grey: no resize, no crop).
    first = [i for i in range(200) if labels[i] == 0][0]
    np.testing.assert_array_equal(got.train_x[0, 0], images[first])
    out = work / "folder_qat"
    proc = qat_cli("finetune", SMALL, "--calib", small_calib, "--precision", "int8", "--data", folder, "--epochs", 1,
                   "--batch-size", 32, "--threads", 2, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "data: " in proc.stdout and "of 10 classes" in proc.stdout
    nb("quantize", out / "model.onnx", "--calib", out / "model.calib", "--precision", "int8", "-o", work / "folder.nbl")
    assert "top-1" in nb("eval", work / "folder.nbl", "--data", folder)
    few = work / "few"
    for k in range(3):
        (few / f"c{k}").mkdir(parents=True)
        Image.fromarray(images[k]).save(few / f"c{k}" / "a.png")
    proc = qat_cli("finetune", SMALL, "--calib", small_calib, "--data", few, "--test-data", few, "-o", work / "few_out")
    assert proc.returncode == 2 and "3 classes, the model scores 10" in proc.stderr
