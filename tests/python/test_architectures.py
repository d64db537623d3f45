"""The building blocks of torchvision's CNNs, small: each is exported by PyTorch to ONNX (opset 13),
run by nibble in FP32 against PyTorch, quantized to INT8 (ops without an integer layer kept in
float, with the reason reported) and run again. docs/coverage.md has the full-size survey."""
import numpy as np
import pytest
import torch
from torch import nn

torch.manual_seed(0)


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):  # EfficientNet, RegNet, MobileNetV3
    def __init__(self, c, gate=nn.Sigmoid):
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1), gate()

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(torch.relu(self.fc1(s))))


class InvertedResidual(nn.Module):  # MobileNetV2, MNASNet: ReLU6, depthwise, linear bottleneck
    def __init__(self, c, se=False, act=nn.ReLU6):
        super().__init__()
        self.expand = conv_bn(c, 4 * c, 1, act=act)
        self.dw = conv_bn(4 * c, 4 * c, 3, groups=4 * c, act=act)
        self.se = SqueezeExcite(4 * c, nn.Hardsigmoid if act is nn.Hardswish else nn.Sigmoid) if se else nn.Identity()
        self.project = conv_bn(4 * c, c, 1, act=None)

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class Head(nn.Module):
    def __init__(self, c, classes=10, mean=False):
        super().__init__()
        self.fc, self.mean = nn.Linear(c, classes), mean

    def forward(self, x):
        x = x.mean([2, 3]) if self.mean else torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class Inception(nn.Module):  # GoogLeNet, SqueezeNet: branches joined by Concat, ceil-mode pools
    def __init__(self, c):
        super().__init__()
        self.a, self.b = conv_bn(c, 8, 1), nn.Sequential(conv_bn(c, 4, 1), conv_bn(4, 8, 3))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn(c, 8, 1))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x), self.pool(x)], 1)


class DenseLayer(nn.Module):  # DenseNet: BN-ReLU-conv on the concatenation of all earlier maps
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 8, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class ShuffleBlock(nn.Module):  # ShuffleNetV2: split, concat, channel shuffle by reshape/transpose
    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(conv_bn(h, h, 1), conv_bn(h, h, 3, groups=h, act=None), conv_bn(h, h, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, hh, ww = y.shape
        return y.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)


class Tokens(nn.Module):  # ViT, ConvNeXt: patches, LayerNorm, GELU MLP, attention over tokens
    def __init__(self, d=16):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        h = self.ln(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.mlp(self.ln(t))
        return self.fc(t.mean(1))


PATTERNS = {
    "depthwise_relu6_residual": lambda: nn.Sequential(conv_bn(3, 8, 3, 2, act=nn.ReLU6), InvertedResidual(8),
                                                      InvertedResidual(8), Head(8, mean=True)),
    "squeeze_excite_silu": lambda: nn.Sequential(conv_bn(3, 8, 3, 2, act=nn.SiLU),
                                                 InvertedResidual(8, se=True, act=nn.SiLU), Head(8)),
    "hardswish_hardsigmoid": lambda: nn.Sequential(conv_bn(3, 8, 3, 2, act=nn.Hardswish),
                                                   InvertedResidual(8, se=True, act=nn.Hardswish), Head(8)),
    "inception_concat": lambda: nn.Sequential(conv_bn(3, 8, 3, 2), nn.MaxPool2d(3, 2, ceil_mode=True), Inception(8),
                                              conv_bn(24, 16, 1), Head(16)),
    "dense_concat": lambda: nn.Sequential(conv_bn(3, 8, 3, 2), DenseLayer(8), DenseLayer(16), Head(24)),
    "channel_shuffle": lambda: nn.Sequential(conv_bn(3, 8, 3, 2), ShuffleBlock(8), ShuffleBlock(8), Head(8)),
    "tokens": Tokens,
}
# Ops each pattern must keep in float (the rest of the model is integer).
FLOAT_OPS = {
    "squeeze_excite_silu": {"Sigmoid", "Mul"},
    "hardswish_hardsigmoid": {"HardSigmoid", "Mul"},  # opset 13 has no HardSwish: x * HardSigmoid(x)
    "inception_concat": {"Concat"},
    "dense_concat": {"Concat"},
    "channel_shuffle": {"Concat", "Reshape", "Transpose"},
    "tokens": {"ReduceMean", "Softmax", "Erf", "MatMul"},  # LayerNorm and GELU decomposed at opset 13
}


def build(name, x):
    model = PATTERNS[name]()
    model.train()
    with torch.no_grad():  # BatchNorm statistics of the data, as a trained network has
        for _ in range(3):
            model(x)
    return model.eval()


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_runs_in_fp32_and_quantizes(run_nibble, tmp_path, name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    model = build(name, torch.from_numpy(x))
    onnx_path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, torch.from_numpy(x[:1]), str(onnx_path), opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "x.npy", x)

    run_nibble("run", onnx_path, "-i", tmp_path / "x.npy", "-o", tmp_path / "fp32.npy", check=True)
    fp32 = np.load(tmp_path / "fp32.npy")
    assert np.abs(fp32 - ref).max() <= 1e-4 * np.abs(ref).max()

    plan = run_nibble("inspect", onnx_path, check=True).stdout
    assert "quantize (int8):" in plan
    calib = tmp_path / "t.calib"
    run_nibble("calibrate", onnx_path, "--data", tmp_path / "x.npy", "--samples", 0, "-o", calib, check=True)
    q = tmp_path / "int8"
    report = run_nibble("quantize", onnx_path, "--calib", calib, "-o", q, check=True).stdout
    kept = {line.split("=", 1)[1] for f in q.iterdir() if f.is_file() and f.read_text().startswith("Op\n")
            for line in f.read_text().splitlines() if line.startswith("op_type=")}
    assert FLOAT_OPS.get(name, set()) <= kept, (kept, report)
    integer = [f for f in q.iterdir() if f.is_file() and ("compute_mode=u8s8s32" in f.read_text()
                                                          or "compute_mode=s8s8s32" in f.read_text())]
    assert integer, report
    for op in kept:  # what inspect announced is what quantize did
        assert op in plan, (op, plan)
    run_nibble("run", q, "-i", tmp_path / "x.npy", "-o", tmp_path / "int8.npy", check=True)
    out = np.load(tmp_path / "int8.npy").ravel().astype(np.float64)
    cos = out @ fp32.ravel() / (np.linalg.norm(out) * np.linalg.norm(fp32) + 1e-30)
    assert cos >= 0.99, cos
    # The quantized model exports to QDQ ONNX, float ops included.
    run_nibble("export", q, "-o", tmp_path / "qdq.onnx", check=True)
    if "Concat" in FLOAT_OPS.get(name, set()):
        shared = concat_branches_sharing_its_scale(onnx_path, q)
        assert shared > 0 if name == "inception_concat" else shared == 0, shared
    assert rounded_for_float_ops_only(onnx_path, q) == []
    if name in ("squeeze_excite_silu", "hardswish_hardsigmoid"):
        # Each conv under an activation or gate in float hands over f32 sums; only the
        # classifier did before.
        scales = sorted(name for name, kind, _ in layer_files(q) if kind == "Scale")
        assert len(scales) >= 4, scales


def layer_files(q):
    """(layer name, layer type, key=value fields) of each layer file of model directory q."""
    out = []
    for f in q.iterdir():
        if f.is_file():
            lines = f.read_text().splitlines()
            fields = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("!"))
            out.append((f.name, lines[0] if lines else "", fields))
    return out


def rounded_for_float_ops_only(onnx_path, q):
    """Conv outputs that the quantized model rounds to 8 bits although only float ops read them
    (they should get the f32 sums; a Concat branch that takes the Concat's scale is exempt)."""
    import collections
    import onnx
    graph = onnx.load(str(onnx_path)).graph
    readers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            readers[i].append(n)
    integer_ops = {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Add",
                   "Flatten", "Identity", "Dropout", "BatchNormalization", "Clip"}
    layers = [(name, kind, fields["onnx_tensor"]) for name, kind, fields in layer_files(q) if "onnx_tensor" in fields]
    requantized = {t: name for name, kind, t in layers if kind == "Quantize"}
    shared = {t for _, _, t in layers}
    bad = []
    for t, layer in requantized.items():
        rd = readers.get(t, [])
        if not rd or any(n.op_type in integer_ops for n in rd):
            continue
        if all(n.op_type == "Concat" and n.output[0] in shared for n in rd):
            continue  # a branch quantized at its Concat's scale
        bad.append(layer)
    return sorted(bad)


def concat_branches_sharing_its_scale(onnx_path, q):
    """How many tensors read only by a quantized Concat take the Concat's scale (every one must,
    so that the requantization after the Concat does not round a second time)."""
    import collections
    import onnx
    graph = onnx.load(str(onnx_path)).graph
    readers = collections.Counter(i for n in graph.node for i in n.input)
    scales = collections.defaultdict(set)
    for _, _, fields in layer_files(q):
        if "onnx_tensor" in fields and "output_scale" in fields:
            scales[fields["onnx_tensor"]].add(fields["output_scale"])
    shared = 0
    for n in graph.node:
        if n.op_type != "Concat" or n.output[0] not in scales:
            continue
        for i in n.input:
            if readers[i] == 1 and i in scales:
                assert scales[i] == scales[n.output[0]], (i, scales[i], n.output[0], scales[n.output[0]])
                shared += 1
    return shared


def test_nhwc_model_takes_images_in_its_layout(run_nibble, tmp_path):
    """A model declaring N x H x W x C gets decoded images in that layout (per-channel mean and
    std, shorter side resized and centre-cropped as for N x C x H x W models)."""
    import onnx
    from onnx import TensorProto, helper
    from PIL import Image
    from conftest import REPO
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("ReduceMean", ["t"], ["y"], axes=[2, 3], keepdims=0)]
    g = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 16, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = tmp_path / "nhwc.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    photos = tmp_path / "photos"
    photos.mkdir()
    src = REPO / "data" / "images" / "coffee.png"
    (photos / "coffee.png").write_bytes(src.read_bytes())
    table = tmp_path / "t.calib"
    run_nibble("calibrate", model, "--data", photos, "--method", "max", "--mean", "0.5,0.4,0.3", "--std", "0.5,1,2",
               "-o", table, check=True)
    lo, hi = next(tuple(map(float, line.split()[2:4])) for line in table.read_text().splitlines() if line.startswith("y "))
    img = Image.open(src).convert("RGB")
    w, h = img.size
    s = 16 / min(w, h)
    small = img.resize((int(w * s) if w > h else 16, int(h * s) if h > w else 16), Image.BILINEAR)
    sw, sh = small.size
    left, top = round((sw - 16) / 2), round((sh - 16) / 2)
    crop = np.asarray(small.crop((left, top, left + 16, top + 16)), np.float64) / 255.0
    means = (crop.mean(axis=(0, 1)) - [0.5, 0.4, 0.3]) / [0.5, 1, 2]
    assert abs(lo - means.min()) < 0.01 and abs(hi - means.max()) < 0.01, (lo, hi, means)
