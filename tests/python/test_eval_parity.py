"""`nibble eval` on the committed Fashion-MNIST model reproduces PyTorch's predictions."""
import json
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "fmnist_resnet.onnx"
META = REPO / "models" / "fmnist_resnet.json"
TORCH_PREDICTIONS = REPO / "models" / "fmnist_resnet_test_predictions.npy"
SUBSET = 2000


def test_committed_model_reproduces_pytorch(run_nibble, tmp_path):
    pred_path = tmp_path / "pred.npy"
    proc = run_nibble("eval", MODEL, "--data", "fashion-mnist:test", "--limit", SUBSET,
                      "--predictions", pred_path, check=True)
    m = re.search(r"top-1: ([\d.]+)% \((\d+)/(\d+)\)", proc.stdout)
    assert m, proc.stdout
    ours = np.load(pred_path)
    torch_preds = np.load(TORCH_PREDICTIONS)[:SUBSET].astype(np.int64)
    assert ours.shape == (SUBSET,)
    # FP32 summation order differs from PyTorch's, so a prediction may flip only where two
    # logits tie to within rounding: allow at most one in 2000.
    assert (ours != torch_preds).sum() <= 1
    labels_correct = int(m.group(2))
    torch_correct = int((torch_preds == load_labels()[:SUBSET]).sum())
    assert abs(labels_correct - torch_correct) <= 1


def load_labels():
    import gzip
    raw = gzip.decompress(Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").read_bytes())
    return np.frombuffer(raw[8:], dtype=np.uint8).astype(np.int64)


def test_committed_model_metadata_is_consistent():
    meta = json.loads(META.read_text())
    torch_preds = np.load(TORCH_PREDICTIONS).astype(np.int64)
    correct = int((torch_preds == load_labels()).sum())
    assert correct == meta["correct"]
    assert correct >= 9200, "the committed model must reach 92% top-1"
    assert MODEL.stat().st_size <= 2 * 1024 * 1024
