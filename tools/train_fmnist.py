#!/usr/bin/python3
r"""Train a ResNet-style CNN on Fashion-MNIST and export it to ONNX.

Run with Debian's interpreter (PyTorch 1.13, torchvision 0.14, numpy, onnx 1.12):

    /usr/bin/python3 tools/train_fmnist.py --epochs 30 \
        --save-predictions models/fmnist_resnet_test_predictions.npy

Architectures (--arch):
  * small (default): SmallResNet, a 3x3 stem and basic blocks 1,1,2 at
    widths 16/32/64 (the committed models/fmnist_resnet.onnx).
  * resnet18: torchvision's ResNet-18 layout (BasicBlock, stages 2,2,2,2,
    widths w, 2w, 4w, 8w; --width defaults to 64 as in torchvision).
  * resnet50: torchvision's ResNet-50 v1.5 layout (Bottleneck with the stride
    on the 3x3 conv, stages 3,4,6,3, expansion 4; --width defaults to 64).
  * vit: a small vision transformer (ViT-style): 4x4 patches (7 x 7 tokens of
    --width channels, default 64), learned position embeddings, --blocks
    pre-norm transformer blocks (default 4; 4 heads, MLP of 2 x width with
    GELU), mean over tokens, a linear classifier. Tokens stay on the 7 x 7
    grid as N x C x 7 x 7, so the per-token linear layers (attention's q, k, v
    and output projections, the MLP) are 1 x 1 convolutions and quantize as
    such; LayerNorm runs over the channels; attention (two batched MatMuls and
    a Softmax) is float. Train it with AdamW:
    --arch vit --optimizer adamw --lr 0.001 --weight-decay 0.05.
  The resnets keep torchvision's module names (conv1, bn1, layer1..layer4,
  downsample.0/.1, fc), so the exported ONNX node names look like
  torchvision's.  Their stem depends on --input-size: at 28 a 3x3 stride-1
  conv (1 input channel) + BN + ReLU with no max pool; at any other size
  torchvision's stem (7x7 stride 2 pad 3 + BN + ReLU + max pool 3x3 s2 p1).

Model input : "input",  float32 [N, 1, S, S], pixel / 255 in [0, 1]
              (no mean/std normalization), S = --input-size (default 28).
              For S != 28 the 28x28 images are bilinearly upsampled to S x S
              (F.interpolate, align_corners=False, no antialias) in the data
              pipeline, per batch on the training device; the upsampling is
              NOT part of the exported model, so evaluation tools must feed
              S x S inputs (the JSON summary records this under "upsampling").
Model output: "logits", float32 [N, 10].  N is a dynamic dimension.

Outputs:
  * the ONNX model (-o/--output, default models/fmnist_resnet.onnx),
  * a JSON summary next to it (same stem, .json): PyTorch top-1 of the
    exported (eval-mode, float32) module on the 10,000 test images, command
    line, versions, architecture, parameter count, MACs per image, ...
  * optionally (--save-predictions) the argmax predictions of the exported
    PyTorch module on the 10,000 test images (.npy, uint8) for parity tests.

The Fashion-MNIST IDX files are read directly with gzip + numpy (nothing is
downloaded).

Training on a busy 2-core CPU is slow (about 2 min/epoch for the small model
when idle, much more under load), so training and export can be split: train
anywhere (e.g. on a GPU, any torch >= 1.13) and save the weights as a
version-neutral .npz, then export with Debian's torch 1.13:

    python3 tools/train_fmnist.py --device cuda --epochs 30 --seed 0 \
        --no-export --save-checkpoint ckpt.npz
    /usr/bin/python3 tools/train_fmnist.py --from-checkpoint ckpt.npz \
        --device cpu --save-predictions models/fmnist_resnet_test_predictions.npy

The checkpoint records the architecture (arch, width, blocks, input size), so
the export command needs none of those options.

On CUDA, --amp trains (and evaluates during training) under bf16 autocast with
the model and inputs in channels_last memory format.  It is off by default;
the export and the final evaluation are always float32 (on the CPU unless --eval-device cuda).

Export keeps BatchNormalization nodes (opset 13, inference form) unless
--fold-bn is given.
"""

import argparse
import gzip
import json
import os
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUTPUT = "models/fmnist_resnet.onnx"
NATIVE_SIZE = 28  # Fashion-MNIST images are 28 x 28

ARCHS = ("small", "resnet18", "resnet50", "vit")
DEFAULT_WIDTH = {"small": 16, "resnet18": 64, "resnet50": 64, "vit": 64}
DEFAULT_BLOCKS = {"small": (1, 1, 2), "resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3), "vit": (4,)}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def read_idx(path):
    """Read a (gzipped) IDX file into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    dtype_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if dtype_code != 0x08:
        raise ValueError(f"{path}: unsupported IDX dtype 0x{dtype_code:02x}")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch ({arr.size} vs {dims})")
    return arr.reshape(dims)


def load_split(data_dir, prefix):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{prefix}: {images.shape[0]} images vs {labels.shape[0]} labels")
    # float32 N x 1 x 28 x 28 in [0, 1]: exactly the model's input format.
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x.contiguous(), y


def augment(x, pad, flip, gen):
    """Random crop with zero padding `pad` and random horizontal flip (batched)."""
    n, c, h, w = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (oy[:, None] + torch.arange(h)[None, :])  # n x h
        cols = (ox[:, None] + torch.arange(w)[None, :])  # n x w
        idx_n = torch.arange(n)[:, None, None]
        # xp: n x c x H x W -> gather per sample: result n x h x w x c
        x = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2).contiguous()
    if flip:
        m = torch.rand(n, generator=gen) < 0.5
        x[m] = x[m].flip(3)
    return x


def resize_batch(x, size):
    """Bilinearly upsample an N x 1 x 28 x 28 batch to size x size (identity at 28).

    This is part of the data pipeline (done per batch on the training device),
    not of the exported model."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def init_resnet_weights(model):
    """Kaiming-normal convs, unit BN, and the last BN of each residual branch zeroed
    (torchvision's zero_init_residual): helps small resnets train quickly."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def make_downsample(cin, cout, stride):
    """torchvision's shortcut (conv1x1 + BN) where the shape changes, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """torchvision-style basic block: conv3x3-BN-ReLU-conv3x3-BN (+shortcut) -ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_downsample(cin, cout, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    def __init__(self, width=16, blocks=(1, 1, 2), num_classes=10, stem_width=None):
        super().__init__()
        stem_width = stem_width or width
        self.stem = nn.Sequential(
            nn.Conv2d(1, stem_width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        layers = []
        cin = stem_width
        for i, nb in enumerate(blocks):
            cout = width * (2 ** i)
            for j in range(nb):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

        init_resnet_weights(self)

    def forward(self, x):
        x = self.stem(x)
        x = self.layers(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-
    conv1x1-BN (+shortcut) -ReLU; output channels = planes * 4."""

    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, 1, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_downsample(cin, cout, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout (module names included) for 1-channel input.

    stem "3x3": conv3x3 stride 1 (1 -> width) + BN + ReLU, no max pool (for 28x28);
    stem "7x7": torchvision's conv7x7 stride 2 pad 3 + BN + ReLU + max pool 3x3 s2 p1.
    Stages layer1..layer4 have width, 2*width, 4*width, 8*width planes (times
    the block's expansion); the first block of layer2..layer4 has stride 2."""

    def __init__(self, block, blocks, width=64, num_classes=10, stem="3x3"):
        super().__init__()
        if stem == "3x3":
            self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        elif stem == "7x7":
            self.conv1 = nn.Conv2d(1, width, 7, 2, 3, bias=False)
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "7x7" else nn.Identity()
        cin = width
        for i, nb in enumerate(blocks):
            planes = width * (2 ** i)
            layer = []
            for j in range(nb):
                stride = 2 if (i > 0 and j == 0) else 1
                layer.append(block(cin, planes, stride))
                cin = planes * getattr(block, "expansion", 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

        init_resnet_weights(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of N x C x H x W (each token's features)."""

    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class TokenAttention(nn.Module):
    """Multi-head self-attention over the H x W tokens of N x C x H x W; q, k, v and the output
    projection are 1 x 1 convolutions."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        _, c, h, w = x.shape
        d = c // self.heads
        qkv = self.qkv(x).reshape(-1, 3, self.heads, d, h * w)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # N x heads x d x tokens
        att = torch.softmax(torch.matmul(q.transpose(-2, -1), k) * self.scale, dim=-1)  # N x heads x t x t
        out = torch.matmul(v, att.transpose(-2, -1))  # N x heads x d x t
        return self.proj(out.reshape(-1, c, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=2):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = TokenAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.fc1 = nn.Conv2d(dim, mlp_ratio * dim, 1)
        self.fc2 = nn.Conv2d(mlp_ratio * dim, dim, 1)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SmallViT(nn.Module):
    """A ViT-style classifier for 28 x 28 inputs (see --arch vit)."""

    def __init__(self, dim=64, depth=4, heads=4, patch=4, num_classes=10):
        super().__init__()
        grid = NATIVE_SIZE // patch
        self.patch = nn.Conv2d(1, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, dim, grid, grid))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = ChannelLayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.blocks(self.patch(x) + self.pos)
        x = self.norm(x).mean((2, 3))
        return self.fc(x)


def stem_for(arch, input_size):
    """The stem a model gets: SmallResNet always has its 3x3 stem; the resnets
    use the 3x3 stride-1 stem at the native 28x28 and torchvision's 7x7 stem
    (with max pool) on upsampled input."""
    if arch == "small" or input_size == NATIVE_SIZE:
        return "3x3"
    return "7x7"


def build_model(arch, width=None, blocks=None, input_size=NATIVE_SIZE, num_classes=10):
    """The model for --arch/--width/--blocks/--input-size (None: the arch's default)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (choose from {', '.join(ARCHS)})")
    width = DEFAULT_WIDTH[arch] if width is None else width
    blocks = DEFAULT_BLOCKS[arch] if blocks is None else tuple(blocks)
    if arch == "small":
        return SmallResNet(width=width, blocks=blocks, num_classes=num_classes)
    if arch == "vit":
        if input_size != NATIVE_SIZE or len(blocks) != 1:
            raise ValueError("vit takes 28 x 28 inputs and one --blocks entry (its depth)")
        return SmallViT(dim=width, depth=blocks[0], num_classes=num_classes)
    block = BasicBlock if arch == "resnet18" else Bottleneck
    return ResNet(block, blocks, width=width, num_classes=num_classes,
                  stem=stem_for(arch, input_size))


def stage_channels(arch, width, blocks):
    """Output channels of each stage."""
    expansion = 4 if arch == "resnet50" else 1
    return [width * (2 ** i) * expansion for i in range(len(blocks))]


def count_macs(model, input_shape=(1, 1, 28, 28)):
    """Multiply-accumulates per image of Conv2d and Linear layers.

    BatchNorm, ReLU, residual adds and the average pool are not counted
    (they are O(activations), negligible here)."""
    macs = []

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs.append(out[0].numel() * k)

    def linear_hook(m, inp, out):
        macs.append(m.in_features * m.out_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return int(sum(macs))


# --------------------------------------------------------------------------
# Train / eval
# --------------------------------------------------------------------------

@torch.no_grad()
def predict(model, x, device, batch_size=1000, input_size=NATIVE_SIZE, amp=False):
    """Argmax predictions; x is N x 1 x 28 x 28, resized on `device` to input_size."""
    model.eval()
    preds = []
    for i in range(0, x.shape[0], batch_size):
        xb = resize_batch(x[i:i + batch_size].to(device), input_size)
        if amp:
            xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                out = model(xb)
        else:
            out = model(xb)
        preds.append(out.argmax(1).cpu())
    return torch.cat(preds)


def export_onnx(model, path, fold_bn, input_size=NATIVE_SIZE):
    model.eval()
    dummy = torch.zeros(1, 1, input_size, input_size)
    tmp = path + ".tmp"
    # With TrainingMode.EVAL torch 1.13 runs its eval peephole pass, which
    # folds BatchNorm into the preceding Conv. PRESERVE with the module in
    # eval mode exports inference-mode BatchNormalization nodes instead.
    training = torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE
    import warnings
    with warnings.catch_warnings():
        # PRESERVE always warns about constant folding; harmless since the
        # module is in eval mode (nothing trainable gets folded).
        warnings.filterwarnings("ignore", message="It is recommended that constant folding")
        torch.onnx.export(
            model, dummy, tmp,
            export_params=True,
            opset_version=13,
            do_constant_folding=True,
            training=training,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            # torch >= 2.5 defaults to its dynamo exporter; this one is the TorchScript exporter
            # of torch 1.13, which gives the same graph on both.
            **({"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}),
        )

    import onnx
    m = onnx.load(tmp)
    # torch deduplicates initializers with identical values and feeds the
    # duplicates through Identity nodes (here: the bias of the last BN of a
    # downsampling block and of its shortcut BN receive identical gradients,
    # so they stay equal).  Replace those Identity nodes by plain copies of
    # the initializer so the graph only contains compute ops.
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(node)
    if len(keep) != len(m.graph.node):
        del m.graph.node[:]
        m.graph.node.extend(keep)
        onnx.save(m, tmp)
    onnx.checker.check_model(m)
    os.replace(tmp, path)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    op_types = sorted({n.op_type for n in m.graph.node})
    return m, op_types


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="architecture: small (SmallResNet), resnet18 or resnet50 in torchvision's "
                        "layout, or vit (a small vision transformer) (default: small)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.1,
                   help="peak learning rate of the OneCycle schedule (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default: %(default)s)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                   help="sgd (Nesterov momentum 0.9, the resnets) or adamw (the vit) (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--width", type=int, default=None,
                   help="base width w; small: stages of w, 2w, 4w channels at 28/14/7 (default 16); "
                        "resnet18/resnet50: stages of w, 2w, 4w, 8w planes (default 64, as torchvision)")
    p.add_argument("--blocks", type=str, default=None,
                   help="blocks per stage, comma separated (default: small 1,1,2; resnet18 2,2,2,2; "
                        "resnet50 3,4,6,3; the resnets need 4 stages)")
    p.add_argument("--input-size", type=int, default=None,
                   help="model input size S (S x S); for S != 28 the images are bilinearly upsampled "
                        "per batch outside the model, and resnet18/resnet50 get torchvision's 7x7 "
                        "stem with max pool (default: 28)")
    p.add_argument("--pad", type=int, default=2, help="random-crop padding, 0 disables (default: %(default)s)")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="training device (default: cuda if available, else cpu)")
    p.add_argument("--amp", action="store_true",
                   help="CUDA only: train under bf16 autocast with channels_last tensors (default: off)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                   help="directory with the gzipped Fashion-MNIST IDX files (default: %(default)s)")
    p.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                   help="output ONNX path; a .json summary is written next to it (default: %(default)s)")
    p.add_argument("--save-predictions", metavar="PATH.npy", default=None,
                   help="save the exported model's argmax predictions on the 10,000 test images (uint8 .npy)")
    p.add_argument("--fold-bn", action="store_true",
                   help="let torch fold BatchNorm into Conv at export (default: keep BatchNormalization nodes)")
    p.add_argument("--save-checkpoint", metavar="PATH.npz", default=None,
                   help="save the trained weights (numpy .npz, readable by any torch/numpy version)")
    p.add_argument("--from-checkpoint", metavar="PATH.npz", default=None,
                   help="skip training: load weights saved by --save-checkpoint (its arch/width/blocks/"
                        "input size and training metadata are used), then export and evaluate")
    p.add_argument("--eval-device", choices=["cpu", "cuda"], default="cpu",
                   help="device of the final float32 evaluation of the exported module (default: %(default)s)")
    p.add_argument("--no-export", action="store_true",
                   help="train (and --save-checkpoint) only; skip the ONNX export and the JSON summary")
    p.add_argument("--max-train-batches", type=int, default=0,
                   help="debug: stop each epoch after this many batches (0 = full epoch)")
    p.add_argument("--max-test-images", type=int, default=0,
                   help="debug: evaluate on the first N test images only (0 = all 10,000)")
    args = p.parse_args(argv)
    # the command line as run (main(argv) called from Python: this script's path and argv)
    command = " ".join(shlex.quote(a) for a in (
        [sys.executable] + sys.argv if argv is None
        else [sys.executable, os.path.relpath(os.path.abspath(__file__))] + [str(a) for a in argv]))

    ckpt_meta = None
    ckpt_arrays = None
    if args.from_checkpoint:
        with np.load(args.from_checkpoint) as z:
            ckpt_arrays = {k: z[k] for k in z.files}
        ckpt_meta = json.loads(str(ckpt_arrays.pop("__meta__")))
        # checkpoints written before --arch existed hold a SmallResNet at 28x28
        from_ckpt = {
            "arch": ckpt_meta.get("arch", "small"),
            "width": ckpt_meta["width"],
            "blocks": ",".join(str(b) for b in ckpt_meta["blocks"]),
            "input_size": ckpt_meta.get("input_size", NATIVE_SIZE),
        }
        for key, value in from_ckpt.items():
            given = getattr(args, key)
            if given is not None and str(given).replace(" ", "") != str(value):
                p.error(f"--{key.replace('_', '-')} {given} conflicts with the checkpoint's {value}")
            setattr(args, key, value)
        args.epochs = 0
    args.arch = args.arch or "small"
    if args.input_size is None:
        args.input_size = NATIVE_SIZE
    if args.width is None:
        args.width = DEFAULT_WIDTH[args.arch]
    if args.blocks is None:
        blocks = DEFAULT_BLOCKS[args.arch]
    else:
        try:
            blocks = tuple(int(b) for b in args.blocks.split(","))
        except ValueError:
            p.error(f"--blocks {args.blocks!r}: expected comma-separated integers")
    if not blocks or min(blocks) < 1 or args.width < 1:
        p.error("--width and every --blocks entry must be >= 1")
    if args.arch in ("resnet18", "resnet50") and len(blocks) != 4:
        p.error(f"--arch {args.arch} needs 4 stages in --blocks (got {len(blocks)})")
    if args.arch == "vit" and (len(blocks) != 1 or args.width % 4 or (args.input_size or NATIVE_SIZE) != NATIVE_SIZE):
        p.error("--arch vit takes one --blocks entry (its depth), a --width divisible by its 4 heads and 28 x 28 inputs")
    if args.input_size < NATIVE_SIZE:
        p.error(f"--input-size must be >= {NATIVE_SIZE}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    if args.amp and device != "cuda" and ckpt_arrays is None:
        p.error("--amp (bf16 autocast + channels_last) is for --device cuda only")
    amp = args.amp and device == "cuda" and ckpt_arrays is None
    input_size = args.input_size
    stem = stem_for(args.arch, input_size)

    torch.set_num_threads(args.threads)
    if device == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)  # shuffling + augmentation (CPU)

    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "t10k")
    if args.max_test_images:
        x_test, y_test = x_test[:args.max_test_images], y_test[:args.max_test_images]
    print(f"data: train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, device {device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    if input_size != NATIVE_SIZE:
        print(f"input: 28x28 images bilinearly upsampled to {input_size}x{input_size} per batch "
              f"on {device} (outside the model)", flush=True)

    model = build_model(args.arch, args.width, blocks, input_size)
    n_params = sum(p_.numel() for p_ in model.parameters())
    macs = count_macs(model, (1, 1, input_size, input_size))
    print(f"model: arch {args.arch}, width {args.width}, blocks {blocks}, input {input_size}x{input_size}, "
          f"stem {stem}, {n_params} parameters, {macs} MACs/image ({macs / 1e6:.2f} M)", flush=True)
    if ckpt_arrays is not None:
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ckpt_arrays.items()}
        model.load_state_dict(sd, strict=True)
        print(f"loaded weights from {args.from_checkpoint} (trained by: {ckpt_meta['command']})", flush=True)
    model.to(device)
    if amp:
        model.to(memory_format=torch.channels_last)
        print("amp: bf16 autocast, channels_last", flush=True)

    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (no_decay if prm.ndim <= 1 else decay).append(prm)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=args.lr)
    else:
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    n = x_train.shape[0]
    steps_per_epoch = n // args.batch_size  # drop the last partial batch
    if args.max_train_batches:
        steps_per_epoch = min(steps_per_epoch, args.max_train_batches)
    sched = None
    if args.epochs > 0:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    crit = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    t_start = time.time()
    epoch_times = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            xb = augment(x_train[idx], args.pad, not args.no_flip, gen).to(device)
            xb = resize_batch(xb, input_size)
            yb = y_train[idx].to(device)
            if amp:
                xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    out = model(xb)
                    loss = crit(out, yb)
            else:
                out = model(xb)
                loss = crit(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * yb.shape[0]
            tot_correct += (out.argmax(1) == yb).sum().item()
            seen += yb.shape[0]
        t_train = time.time() - t0
        test_pred = predict(model, x_test, device, input_size=input_size, amp=amp)
        test_acc = (test_pred == y_test).float().mean().item()
        dt = time.time() - t0
        epoch_times.append(dt)
        print(f"epoch {epoch:3d}/{args.epochs}  lr {sched.get_last_lr()[0]:.4f}  "
              f"train loss {tot_loss / seen:.4f}  train top-1 {100 * tot_correct / seen:.2f}%  "
              f"test top-1 {100 * test_acc:.2f}%  ({t_train:.0f}s train, {dt:.0f}s total)", flush=True)
    train_seconds = time.time() - t_start

    if ckpt_meta is None:
        ckpt_meta = {
            "command": command,
            "torch_version": torch.__version__,
            "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else None,
            "arch": args.arch,
            "input_size": input_size,
            "stem": stem,
            "amp": amp,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "weight_decay": args.weight_decay, "label_smoothing": args.label_smoothing,
            "optimizer": args.optimizer,
            "seed": args.seed, "width": args.width, "blocks": list(blocks),
            "pad": args.pad, "flip": not args.no_flip,
            "max_train_batches": args.max_train_batches or None,
            "train_seconds": round(train_seconds, 1),
            "mean_epoch_seconds": round(sum(epoch_times) / max(1, len(epoch_times)), 1),
            "final_test_top1_during_training": test_acc if args.epochs > 0 else None,
        }
    if args.save_checkpoint:
        model_sd = model.state_dict()
        # .contiguous(): channels_last (--amp) weights are saved in plain NCHW order
        arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in model_sd.items()}
        arrays["__meta__"] = np.array(json.dumps(ckpt_meta))
        tmp = args.save_checkpoint + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, args.save_checkpoint)
        print(f"saved checkpoint to {args.save_checkpoint}", flush=True)
    if args.no_export:
        return 0

    # ---- export ----
    model.to("cpu").eval()
    model.to(memory_format=torch.contiguous_format)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    onnx_model, op_types = export_onnx(model, args.output, args.fold_bn, input_size)
    n_bn = sum(1 for nd in onnx_model.graph.node if nd.op_type == "BatchNormalization")
    print(f"exported {args.output} ({os.path.getsize(args.output)} bytes), opset 13, "
          f"op types: {', '.join(op_types)}; BatchNormalization nodes: {n_bn}", flush=True)

    # ---- final evaluation of the exported (eval-mode, float32) module ----
    if args.eval_device == "cuda":
        # float32 convolutions (no TF32) for a float32 reference
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        model.to("cuda")
    pred = predict(model, x_test, args.eval_device, input_size=input_size)
    model.to("cpu")
    correct = int((pred == y_test).sum().item())
    total = int(y_test.shape[0])
    top1 = correct / total
    print(f"pytorch top-1: {100 * top1:.2f}% ({correct}/{total})", flush=True)

    if args.save_predictions:
        os.makedirs(os.path.dirname(os.path.abspath(args.save_predictions)), exist_ok=True)
        tmp = args.save_predictions + ".tmp.npy"
        np.save(tmp, pred.numpy().astype(np.uint8))
        os.replace(tmp, args.save_predictions)
        print(f"saved test predictions to {args.save_predictions}", flush=True)

    preprocessing = "pixel / 255, no mean/std normalization"
    upsampling = None
    if input_size != NATIVE_SIZE:
        preprocessing += (f"; the 28x28 image is then bilinearly upsampled to {input_size}x{input_size} "
                          "(torch.nn.functional.interpolate, align_corners=False, no antialias) "
                          "OUTSIDE the model: feed {0}x{0} inputs".format(input_size))
        upsampling = {"outside_model": True, "from": [NATIVE_SIZE, NATIVE_SIZE],
                      "to": [input_size, input_size], "mode": "bilinear",
                      "align_corners": False, "antialias": False,
                      "function": "torch.nn.functional.interpolate"}
    json_path = os.path.splitext(args.output)[0] + ".json"
    summary = {
        "onnx": os.path.basename(args.output),
        "pytorch_top1": top1,
        "correct": correct,
        "total": total,
        "command": command,
        "torch_version": torch.__version__,
        "onnx_version": __import__("onnx").__version__,
        "onnx_opset": 13,
        "onnx_op_types": op_types,
        "batchnorm_nodes_in_onnx": n_bn,
        "arch": args.arch,
        "input_size": input_size,
        "stem": stem,
        "upsampling": upsampling,
        "epochs": ckpt_meta["epochs"],
        "seed": ckpt_meta["seed"],
        "width": args.width,
        "blocks": list(blocks),
        "stage_channels": stage_channels(args.arch, args.width, blocks),
        "parameters": n_params,
        "macs_per_image": macs,
        "input": {"name": "input", "shape": ["N", 1, input_size, input_size], "dtype": "float32",
                  "preprocessing": preprocessing},
        "output": {"name": "logits", "shape": ["N", 10], "dtype": "float32"},
        "training": ckpt_meta,
        "test_predictions": os.path.basename(args.save_predictions) if args.save_predictions else None,
    }
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    os.replace(tmp, json_path)
    print(f"wrote {json_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
