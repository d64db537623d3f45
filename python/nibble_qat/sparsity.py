"""2:4 structured sparsity in fine-tuning. The layers of a pruned model (`nibble prune MODEL
--pattern 2:4`) whose weights hold at most two non-zeros in every group of four input channels
keep exactly their zeros: gradients and weights are masked at every step, so the fine-tuned
model is as sparse as the pruned one and `nibble quantize` records the same pattern."""

import torch

from .graph import Unit

PATTERNS = ("2:4",)


def reduction_view(w, unit):
    """`w` (a conv or linear weight) as [rows, channels, inner], the channels being the reduction
    dimension grouped by four: conv [M, C, KH, KW] -> [M, C, KH x KW]; Gemm with transB [N, K]
    and the others' [K, N] -> [N, K, 1]."""
    if unit.kind == Unit.CONV:
        return w.reshape(w.shape[0], w.shape[1], -1)
    trans_b = unit.node.op_type == "Gemm" and unit.node.attrs.get("transB", 0) != 0
    return (w if trans_b else w.t()).unsqueeze(-1)


def is_2to4(w3):
    """Whether every group of four consecutive channels of `w3` ([rows, channels, inner]) has at
    most two non-zeros (the rule of the engine's `sparsity=2:2 4` layers)."""
    rows, channels, inner = w3.shape
    if channels == 0 or channels % 4:
        return False
    nonzero = (w3 != 0).reshape(rows, channels // 4, 4, inner).sum(2)
    return bool((nonzero <= 2).all())


def masks(model, pattern="2:4"):
    """{ONNX weight name: bool mask} of the conv and linear layers of `model` (a QatModel) that
    are 2:4 sparse; a ValueError when none is."""
    if pattern not in PATTERNS:
        raise ValueError(f"--sparsity {pattern}: the supported pattern is {', '.join(PATTERNS)}")
    out, layers = {}, 0
    for u in model.units:
        if u.kind not in (Unit.CONV, Unit.LINEAR):
            continue
        layers += 1
        if u.kind == Unit.CONV and u.node.attrs.get("group", 1) != 1:
            continue
        name = u.node.inputs[1]
        w = model._tensor(name).detach()
        if is_2to4(reduction_view(w, u)):
            out[name] = w != 0
    if not out:
        raise ValueError(f"--sparsity {pattern}: none of the {layers} conv and linear layers of "
                         f"{model.onnx.path} is 2:4 sparse; prune it first: nibble prune MODEL.onnx --pattern 2:4 "
                         f"-o pruned.onnx")
    return out


class Masker:
    """Keeps the masked weights of `model` at zero: `gradients()` before each optimizer step,
    `weights()` after it (momentum and weight decay then never move them)."""

    def __init__(self, model, mask):
        self.pairs = [(model._tensor(name), m) for name, m in mask.items()]

    def to(self, device):
        self.pairs = [(p, m.to(device)) for p, m in self.pairs]
        return self

    def gradients(self):
        for p, m in self.pairs:
            if p.grad is not None:
                p.grad.mul_(m)

    def weights(self):
        with torch.no_grad():
            for p, m in self.pairs:
                p.mul_(m)
