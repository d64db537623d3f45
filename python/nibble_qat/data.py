"""Fashion-MNIST for fine-tuning: the IDX files as nibble reads them, scaled to [0, 1]."""

import gzip
import os

import numpy as np
import torch
import torch.nn.functional as F

from .arith import div

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


class DataError(ValueError):
    pass


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims)) if dims else 0
    body = data[4 + 4 * ndim:]
    if len(body) != count:
        raise DataError(f"{path}: holds {len(body)} bytes of data, its header says {count}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _file(data_dir, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    raise DataError(f"{os.path.join(data_dir, stem)}.gz: no such file (Fashion-MNIST's IDX files; set --data-dir)")


def load_split(data_dir, split):
    """(images u8 N x 28 x 28, labels i64 N) of 'train' or 'test'."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_file(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_file(data_dir, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{data_dir}: the {split} images and labels do not match")
    return images, labels.astype(np.int64)


def to_input(images_u8, size, device):
    """Model inputs from u8 images: pixel / 255 in f32 (as nibble does), bilinearly resized to
    size x size when the model is not 28 x 28. The resize is computed in float64 and rounded to
    f32 once (nibble computes it the same way)."""
    x = torch.from_numpy(np.ascontiguousarray(images_u8).copy())
    if torch.device(device).type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)  # no wait for the device's queued work
    x = x.to(device=device, dtype=torch.float32).unsqueeze(1)
    x = div(x, 255.0)
    if size != x.shape[-1] or size != x.shape[-2]:
        x = resize(x, size, size)
    return x


def _taps(n_in, n_out, device):
    """Source rows (i0, i1) and weights (l0, l1) of a half-pixel bilinear resize, in float64."""
    scale = n_in / n_out
    s = (torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * scale - 0.5
    s = torch.clamp(s, min=0.0)
    i0 = s.to(torch.int64)
    i1 = i0 + (i0 < n_in - 1).to(torch.int64)
    l1 = s - i0.to(torch.float64)
    return i0, i1, 1.0 - l1, l1


def resize(x, out_h, out_w):
    """Bilinear resize of f32 N x C x H x W with half-pixel centres (as F.interpolate with
    align_corners=False, no antialiasing), computed in float64 with one rounding to f32 at the end,
    each product and sum rounded in the order nibble's C++ loader uses, so that both give the
    same f32 inputs."""
    y0, y1, a0, a1 = _taps(x.shape[-2], out_h, x.device)
    x0, x1, b0, b1 = _taps(x.shape[-1], out_w, x.device)
    v = x.to(torch.float64)
    rows0, rows1 = v[..., y0, :], v[..., y1, :]
    top = b0 * rows0[..., x0] + b1 * rows0[..., x1]
    bottom = b0 * rows1[..., x0] + b1 * rows1[..., x1]
    return (a0[:, None] * top + a1[:, None] * bottom).to(torch.float32)


def augment(x_u8, gen, pad=2):
    """Random crop with `pad` pixels of zero padding and random horizontal flips, on u8 N x H x W."""
    n, h, w = x_u8.shape
    xp = F.pad(x_u8, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x_u8.device)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x_u8.device)
    idx = torch.arange(n, device=x_u8.device)[:, None, None]
    out = xp[idx, rows[:, :, None], cols[:, None, :]]
    flip = (torch.rand(n, generator=gen) < 0.5).to(x_u8.device)
    return torch.where(flip[:, None, None], out.flip(-1), out)
