"""tools/train_fmnist.py: tiny CPU runs of every --arch, the exported ONNX files, checkpoints,
the torchvision layouts, and the committed Fashion-MNIST models' summaries.

The runs call the script's main() in this process (one torch import) with 1 thread,
a couple of training batches and a few test images.  Widths are >= 8: Debian's torch 1.13
corrupts the heap in the CPU backward pass of channels_last convolutions with 4 channels
(the augmented batches have strides that torch reads as channels_last).
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, shape_inference

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
needs_data = pytest.mark.skipif(not all((DATA_DIR / f).is_file() for f in DATA_FILES),
                                reason=f"Fashion-MNIST not found in {DATA_DIR}")
TEST_IMAGES = 32


@pytest.fixture(scope="module")
def tf():
    spec = importlib.util.spec_from_file_location("train_fmnist", REPO / "tools" / "train_fmnist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train(tf, tmp_path, name, *args):
    """A tiny CPU run; returns the ONNX path and the JSON summary (None with --no-export)."""
    onnx_path = tmp_path / f"{name}.onnx"
    argv = ["--device", "cpu", "--threads", "1", "--epochs", "1", "--batch-size", "16",
            "--max-train-batches", "2", "--max-test-images", str(TEST_IMAGES),
            "--data-dir", str(DATA_DIR), "-o", str(onnx_path), *map(str, args)]
    assert tf.main(argv) == 0
    json_path = onnx_path.with_suffix(".json")
    return onnx_path, (json.loads(json_path.read_text()) if json_path.exists() else None)


def check_onnx(path, size):
    """checker + strict shape inference; input [N,1,S,S] and logits [N,10]; returns the model."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(inferred)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    graph = inferred.graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    assert dims(graph.input[0]) == ["N", 1, size, size]
    assert dims(graph.output[0]) == ["N", 10]
    # every intermediate tensor got a shape of the right rank
    shapes = {vi.name: dims(vi) for vi in graph.value_info}
    for node in graph.node:
        for out in node.output:
            if out != "logits":
                assert out in shapes, f"no inferred shape for {out} ({node.name})"
                assert len(shapes[out]) in (2, 4), (out, shapes[out])
    return model


ARCH_CASES = [
    # arch, input size, width, expected BatchNormalization nodes, extra ops
    pytest.param("small", 28, 8, 11, set(), id="small-28"),
    pytest.param("resnet18", 28, 8, 20, set(), id="resnet18-28"),
    pytest.param("resnet50", 28, 8, 53, set(), id="resnet50-28"),
    pytest.param("resnet50", 224, 8, 53, {"MaxPool"}, id="resnet50-224"),
]


@needs_data
def test_vit_exports_a_model_nibble_runs_and_quantizes(tf, tmp_path, run_nibble):
    """The ViT-style model: attention and LayerNorm ops in the ONNX file, nibble's FP32 run equal to
    PyTorch's, and every token projection quantized as a w4a8-fp8 1x1 conv by DPQ."""
    onnx_path, summary = train(tf, tmp_path, "vit", "--arch", "vit", "--width", 16, "--blocks", 2,
                               "--optimizer", "adamw", "--lr", 0.001, "--save-checkpoint", tmp_path / "vit.npz")
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "MatMul", "Softmax", "ReduceMean", "Erf", "Gemm"} <= ops and "BatchNormalization" not in ops
    assert summary["arch"] == "vit" and summary["blocks"] == [2] and summary["training"]["optimizer"] == "adamw"
    net = tf.build_model("vit", 16, (2,), 28)
    assert summary["parameters"] == sum(p.numel() for p in net.parameters())
    with np.load(tmp_path / "vit.npz") as z:
        net.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files if k != "__meta__"}, strict=True)
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    run_nibble("run", onnx_path, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npy", check=True)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-5)
    calib = tmp_path / "vit.calib"
    run_nibble("calibrate", onnx_path, "--samples", 64, "--method", "max", "-o", calib, check=True)
    out = run_nibble("quantize", onnx_path, "--calib", calib, "--precision", "w4a8-fp8", "--dpq", "--samples", 32,
                     "-o", tmp_path / "vit.nbl", check=True).stdout
    for layer in ("blocks_blocks_0_attn_qkv", "blocks_blocks_0_attn_proj", "blocks_blocks_1_fc1", "blocks_blocks_1_fc2"):
        assert f"{layer} " in out and "w4a8-fp8" in out.split(f"{layer} ")[1].splitlines()[0], out


@needs_data
@pytest.mark.parametrize("arch,size,width,n_bn,extra_ops", ARCH_CASES)
def test_tiny_run_exports_valid_onnx(tf, tmp_path, arch, size, width, n_bn, extra_ops):
    pred_path = tmp_path / "pred.npy"
    onnx_path, summary = train(tf, tmp_path, arch, "--arch", arch, "--input-size", size,
                               "--width", width, "--save-predictions", pred_path)
    model = check_onnx(onnx_path, size)

    ops = sorted({n.op_type for n in model.graph.node})
    assert ops == sorted({"Add", "BatchNormalization", "Conv", "Flatten", "Gemm",
                          "GlobalAveragePool", "Relu"} | extra_ops)
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == n_bn
    names = [n.name for n in model.graph.node]
    if arch == "small":
        assert any("/layers/" in nm for nm in names)
    else:
        # torchvision's module names: /conv1, /bn1, /layerK/layerK.J/..., downsample.0/.1, /fc
        for prefix in ["/conv1/", "/bn1/", "/layer1/layer1.0/", "/layer2/layer2.0/downsample/downsample.0/",
                       "/layer4/layer4.0/downsample/downsample.1/", "/fc/"]:
            assert any(nm.startswith(prefix) for nm in names), (prefix, names[:10])
        last = {"resnet18": "/layer4/layer4.1/", "resnet50": "/layer4/layer4.2/"}[arch]
        assert any(nm.startswith(last) for nm in names)
        inits = {t.name for t in model.graph.initializer}
        assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "fc.weight"} <= inits
        if arch == "resnet50":
            assert "layer1.0.conv3.weight" in inits and "layer1.0.downsample.0.weight" in inits
    conv1 = numpy_helper.to_array(next(t for t in model.graph.initializer
                                       if t.name in ("conv1.weight", "stem.0.weight")))
    assert conv1.shape == ((width, 1, 7, 7) if (arch != "small" and size == 224) else (width, 1, 3, 3))

    assert summary["arch"] == arch and summary["input_size"] == size and summary["width"] == width
    expected_blocks = {"small": [1, 1, 2], "resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}[arch]
    assert summary["blocks"] == expected_blocks
    assert summary["input"]["shape"] == ["N", 1, size, size]
    assert summary["total"] == TEST_IMAGES and summary["training"]["arch"] == arch
    if size == 28:
        assert summary["upsampling"] is None
    else:
        assert summary["upsampling"]["outside_model"] is True
        assert summary["upsampling"]["to"] == [size, size]
        assert summary["upsampling"]["mode"] == "bilinear" and summary["upsampling"]["align_corners"] is False
    net = tf.build_model(arch, width, None, size)
    assert summary["parameters"] == sum(p.numel() for p in net.parameters())
    assert summary["macs_per_image"] == tf.count_macs(net, (1, 1, size, size)) > 0
    pred = np.load(pred_path)
    assert pred.dtype == np.uint8 and pred.shape == (TEST_IMAGES,) and pred.max() < 10


@needs_data
def test_checkpoint_round_trip_and_fold_bn(tf, tmp_path):
    ckpt = tmp_path / "r18.npz"
    onnx_a, summary_a = train(tf, tmp_path, "a", "--arch", "resnet18", "--width", 8,
                              "--save-checkpoint", ckpt, "--save-predictions", tmp_path / "a.npy")
    # the checkpoint carries the architecture: no --arch/--width needed to export it
    onnx_b, summary_b = train(tf, tmp_path, "b", "--from-checkpoint", ckpt,
                              "--save-predictions", tmp_path / "b.npy")
    assert summary_b["arch"] == "resnet18" and summary_b["width"] == 8
    assert summary_b["training"]["command"] == summary_a["training"]["command"]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    init_a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_a)).graph.initializer}
    init_b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_b)).graph.initializer}
    assert init_a.keys() == init_b.keys()
    for k in init_a:
        np.testing.assert_array_equal(init_a[k], init_b[k])

    onnx_c, summary_c = train(tf, tmp_path, "c", "--from-checkpoint", ckpt, "--fold-bn",
                              "--save-predictions", tmp_path / "c.npy")
    folded = check_onnx(onnx_c, 28)
    assert summary_c["batchnorm_nodes_in_onnx"] == 0
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert any(n.name.startswith("/layer3/layer3.1/") for n in folded.graph.node)
    # folding BN changes rounding only
    assert (np.load(tmp_path / "a.npy") != np.load(tmp_path / "c.npy")).sum() <= 1

    with pytest.raises(SystemExit):  # contradicts the checkpoint
        tf.main(["--from-checkpoint", str(ckpt), "--arch", "resnet50", "-o", str(tmp_path / "x.onnx")])


@needs_data
def test_no_export_writes_checkpoint_only(tf, tmp_path):
    ckpt = tmp_path / "r50.npz"
    onnx_path, summary = train(tf, tmp_path, "r50", "--arch", "resnet50", "--input-size", 224,
                               "--width", 8, "--blocks", "1,1,1,1", "--max-train-batches", 1,
                               "--no-export", "--save-checkpoint", ckpt)
    assert summary is None and not onnx_path.exists()
    with np.load(ckpt) as z:
        meta = json.loads(str(z["__meta__"]))
        assert z["conv1.weight"].shape == (8, 1, 7, 7)
        assert z["bn1.num_batches_tracked"].shape == ()
    assert meta["arch"] == "resnet50" and meta["input_size"] == 224 and meta["blocks"] == [1, 1, 1, 1]


def test_argument_errors(tf, tmp_path):
    out = str(tmp_path / "x.onnx")
    for bad in (["--arch", "resnet18", "--blocks", "2,2,2"], ["--arch", "vgg"],
                ["--input-size", "14"], ["--device", "cpu", "--amp"]):
        with pytest.raises(SystemExit):
            tf.main(bad + ["-o", out])


def test_small_defaults_unchanged(tf):
    """--arch small with its defaults is the committed fmnist_resnet.onnx's network."""
    net = tf.build_model("small")
    assert sum(p.numel() for p in net.parameters()) == 151738
    assert tf.count_macs(net) == 12958592
    committed = onnx.load(str(MODELS / "fmnist_resnet.onnx"))
    names = {t.name for t in committed.graph.initializer}
    assert {k for k in net.state_dict() if not k.endswith("num_batches_tracked")} == names


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnets_match_torchvision(tf, arch):
    """Same state_dict names and shapes as torchvision's model (with a 1-channel conv1), and the
    same function once torchvision's model holds our weights."""
    torchvision = pytest.importorskip("torchvision")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ours = tf.build_model(arch, 64, None, 224)
    theirs = getattr(torchvision.models, arch)(num_classes=10)
    theirs.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    with torch.no_grad():  # non-trivial BN so that every residual branch counts
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    theirs.load_state_dict(ours.state_dict())
    ours.eval()
    theirs.eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    # the 28x28 variant only swaps the stem: 3x3 stride 1, no max pool
    small_stem = tf.build_model(arch, 64, None, 28)
    assert small_stem.conv1.kernel_size == (3, 3) and small_stem.conv1.stride == (1, 1)
    assert isinstance(small_stem.maxpool, torch.nn.Identity)
    assert isinstance(ours.maxpool, torch.nn.MaxPool2d)


@pytest.mark.parametrize("stem,arch", [("fmnist_resnet", "small"), ("fmnist_resnet18", "resnet18"), ("fmnist_vit", "vit")])
def test_committed_model_summary(stem, arch):
    onnx_path = MODELS / f"{stem}.onnx"
    if not onnx_path.exists():
        pytest.skip(f"{onnx_path} not present")
    meta = json.loads((MODELS / f"{stem}.json").read_text())
    assert meta.get("arch", "small") == arch
    assert meta["total"] == 10000 and meta["correct"] == round(meta["pytorch_top1"] * 10000)
    preds = np.load(MODELS / f"{stem}_test_predictions.npy")
    assert preds.shape == (10000,) and preds.dtype == np.uint8
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert sorted({n.op_type for n in model.graph.node}) == meta["onnx_op_types"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == meta["input"]["shape"] == ["N", 1, 28, 28]
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer
                   if not t.name.endswith(("running_mean", "running_var")))
    assert n_params == meta["parameters"]
    labels_path = DATA_DIR / "t10k-labels-idx1-ubyte.gz"
    if labels_path.is_file():
        import gzip
        labels = np.frombuffer(gzip.decompress(labels_path.read_bytes())[8:], dtype=np.uint8)
        assert int((preds == labels).sum()) == meta["correct"]


def _r50_outputs(d, qat_top1, lr, weight_decay):
    """A directory of saved bench/qat_resnet50.sh outputs with FP32 at 90.00 and PTQ at 50.00."""
    d.mkdir()
    (d / "resnet50-224.fp32.json").write_text(json.dumps({"pytorch_top1": 0.9, "epochs": 5}))
    history = [{"epoch": 0, "test_top1": 0.5}] + [{"epoch": e, "test_top1": 0.8, "seconds": 60.0} for e in (1, 2)]
    settings = {"batch_size": 64, "lr": lr, "weight_decay": weight_decay, "learn_ranges": True, "distill": 0.5}
    (d / "resnet50-224.finetune.json").write_text(json.dumps({"settings": settings, "history": history}))
    (d / "resnet50-224.agreement.json").write_text(json.dumps(
        {"top1_agreement": 0.999, "disagreements": 10, "images": 10000, "logit_images": 100,
         "logits_identical": False, "max_logit_diff_steps": 1}))
    (d / "resnet50-224.txt").write_text(f"top-1: 50.00% (5000/10000)\ntop-1: {qat_top1:.2f}% "
                                        f"({round(100 * qat_top1)}/10000)\n")
    (d / "resnet50-224.device.txt").write_text("NVIDIA H200, 580, 143771 MiB\nSun Nov 29 2026\n")


def test_accuracy_report_resnet50_section_reads_every_run(tmp_path):
    spec = importlib.util.spec_from_file_location("accuracy_report", REPO / "tools" / "accuracy_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    _r50_outputs(tmp_path / "a", 89.5, 0.005, 5e-4)
    _r50_outputs(tmp_path / "b", 88.0, 0.01, 5e-5)
    text = "\n".join(report.resnet50_224_section(f"{tmp_path / 'a'},{tmp_path / 'missing'},{tmp_path / 'b'}"))
    # The first run in detail: its drop against FP32 and the target.
    assert "| int4 QAT (2 epochs) | 89.50 | 0.50 |" in text
    assert "Target: int4 within 1.0 point: met (0.50)" in text
    assert "10 of 10000 differ" in text and "within 1 output steps" in text
    # Every run that has its files gets a row, with its settings; the missing one is left out.
    rows = [line for line in text.splitlines() if line.startswith(f"| `{tmp_path}")]
    assert len(rows) == 2
    assert "lr 0.005, learned ranges" in rows[0] and "| 89.50 | 0.50 | 9990/10000 |" in rows[0]
    assert "lr 0.01, weight decay 5e-05" in rows[1] and "| 88.00 | 2.00 |" in rows[1]
    # A single run has no table of runs; no run at all gives no section.
    assert "Every complete run" not in "\n".join(report.resnet50_224_section(str(tmp_path / "a")))
    assert report.resnet50_224_section(str(tmp_path / "missing")) == []
