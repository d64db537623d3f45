"""Training data for fine-tuning: Fashion-MNIST (the IDX files as nibble reads them, scaled to
[0, 1]) or a directory of images with one subfolder per class, at the model's input size and
normalized as `nibble calibrate --data DIR --mean M --std S` normalizes them."""

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
    x = x.to(device=device, dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".pnm", ".ppm", ".pgm")


def load_image_folder(path, chw, resize=0, classes=None):
    """(images u8 N x C x H x W, labels i64 N, class names) of `path`, a directory with one
    subfolder of images per class (sorted names give the labels; `classes`, when given, must be
    the same names). Each image's shorter side is resized to `resize` (0: the larger of H and W)
    with bilinear filtering and the centre H x W is cropped, in grey when C is 1."""
    from PIL import Image
    c, h, w = chw
    if c not in (1, 3):
        raise DataError(f"{path}: images need a model input of 1 or 3 channels, the model takes {c}")
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory of class subfolders")
    names = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not names:
        raise DataError(f"{path}: no class subfolders (one folder of images per class)")
    if classes is not None and names != list(classes):
        raise DataError(f"{path}: its classes {names} are not the training data's {list(classes)}")
    images, labels = [], []
    shorter = resize if resize > 0 else max(h, w)
    for label, name in enumerate(names):
        folder = os.path.join(path, name)
        for f in sorted(os.listdir(folder)):
            if not f.lower().endswith(IMAGE_SUFFIXES):
                continue
            file = os.path.join(folder, f)
            try:
                with Image.open(file) as im:
                    im = im.convert("L" if c == 1 else "RGB")
                    scale = shorter / min(im.size)
                    rw, rh = max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale))
                    im = im.resize((rw, rh), Image.BILINEAR)
                    left, top = (rw - w) // 2, (rh - h) // 2
                    a = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
            except (OSError, ValueError) as e:
                raise DataError(f"{file}: cannot read the image ({e})") from None
            images.append(a[None] if c == 1 else a.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{path}: the class subfolders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack(images), np.array(labels, dtype=np.int64), names


class Data:
    """The training and test images (u8, N x H x W or N x C x H x W) with their labels, and how
    a batch of them becomes the model's input."""

    def __init__(self, name, train, test, size, mean=None, std=None, classes=None):
        self.name = name
        self.train_x, self.train_y = train
        self.test_x, self.test_y = test
        self.size = size
        self.mean, self.std = mean, std
        self.classes = classes

    def input(self, images_u8, device):
        x = to_input(images_u8, self.size, device)
        if self.mean is not None:
            c = x.shape[1]
            mean = torch.tensor(_per_channel(self.mean, c, "--mean"), dtype=torch.float32, device=x.device)
            std = torch.tensor(_per_channel(self.std, c, "--std"), dtype=torch.float32, device=x.device)
            x = (x - mean[None, :, None, None]) / std[None, :, None, None]
        return x


def _per_channel(values, c, flag):
    values = list(values)
    if len(values) == 1:
        return values * c
    if len(values) != c:
        raise DataError(f"{flag}: {len(values)} values for {c} channels")
    return values


def fashion_mnist(data_dir, size):
    return Data("fashion-mnist", load_split(data_dir, "train"), load_split(data_dir, "test"), size)


def image_folders(train_dir, test_dir, chw, resize=0, mean=(0.0,), std=(1.0,)):
    """Data from a training directory and a test directory of class subfolders; without a test
    directory every tenth image of each class (in file order) is held out for testing."""
    train_x, train_y, classes = load_image_folder(train_dir, chw, resize)
    if test_dir:
        test_x, test_y, _ = load_image_folder(test_dir, chw, resize, classes)
    else:
        held = np.zeros(len(train_y), dtype=bool)
        for label in range(len(classes)):
            idx = np.flatnonzero(train_y == label)
            held[idx[9::10]] = True
        if not held.any():
            raise DataError(f"{train_dir}: too few images to hold any out for testing (give --test-data)")
        test_x, test_y = train_x[held], train_y[held]
        train_x, train_y = train_x[~held], train_y[~held]
    if any(s <= 0 for s in std):
        raise DataError(f"--std: every value must be positive, got {list(std)}")
    return Data(train_dir, (train_x, train_y), (test_x, test_y), chw[-1], list(mean), list(std), classes)


def augment(x_u8, gen, pad=2):
    """Random crop with `pad` pixels of zero padding and random horizontal flips, on u8 N x H x W
    or N x C x H x W (one crop and flip per image, the same for its channels)."""
    if x_u8.dim() == 3:
        return augment(x_u8[:, None], gen, pad)[:, 0]
    n, c, h, w = x_u8.shape
    xp = F.pad(x_u8, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x_u8.device)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x_u8.device)
    idx = torch.arange(n, device=x_u8.device)[:, None, None, None]
    ch = torch.arange(c, device=x_u8.device)[None, :, None, None]
    out = xp[idx, ch, rows[:, None, :, None], cols[:, None, None, :]]
    flip = (torch.rand(n, generator=gen) < 0.5).to(x_u8.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
