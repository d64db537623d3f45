"""Fine-tuning loop: STE training of a QatModel on Fashion-MNIST, resumable, with the trained
FP32 ONNX model and calibration table written after every epoch."""

import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import arith
from . import calib as calib_io
from . import data as data_io
from . import sparsity as sparsity_io

CHECKPOINT = "checkpoint.pt"
MODEL = "model.onnx"
TABLE = "model.calib"
LOG = "finetune.json"


class Progress:
    """A one-line progress bar on stderr (redrawn on a terminal, a few lines otherwise)."""

    def __init__(self, label, total):
        self.label, self.total, self.done = label, max(total, 1), 0
        self.start = time.time()
        self.tty = sys.stderr.isatty()
        self.next_mark = 0.25

    def update(self, n, extra=""):
        self.done += n
        frac = self.done / self.total
        rate = self.done / max(time.time() - self.start, 1e-9)
        if self.tty:
            bar = "=" * int(frac * 30)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total} {rate:.1f}/s {extra}   ")
            sys.stderr.flush()
        elif frac >= self.next_mark or self.done == self.total:
            sys.stderr.write(f"{self.label} {self.done}/{self.total} ({100 * frac:.0f}%) {rate:.1f}/s {extra}\n")
            self.next_mark = math.floor(frac * 4 + 1) / 4

    def close(self):
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _atomic_save(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_bytes(data, path):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def training_device(device):
    """torch.device(device), checked, with TF32 on for CUDA: TF32 keeps the integer products of
    the fake-quantized layers exact (|q| <= 2047) and their sums exact below 2^24."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: PyTorch sees no CUDA device")
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
    return dev


STEP_MODES = ("auto", "eager", "compiled", "graphed")


def check_step_mode(mode, device, batch_size=None, train_images=None):
    """Step mode `mode` made concrete for `device`: auto is graphed with CUDA and PyTorch 2 (when
    the training set fills one batch: a graph replays one batch shape) and eager otherwise. A
    ValueError when `mode` cannot run there."""
    if mode not in STEP_MODES:
        raise ValueError(f"step mode '{mode}': choose from {', '.join(STEP_MODES)}")
    dev = torch.device(device)
    fast = dev.type == "cuda" and hasattr(torch, "compile")
    short = batch_size is not None and train_images is not None and train_images < batch_size
    if mode == "auto":
        return "graphed" if fast and not short else "eager"
    if mode != "eager" and not fast:
        raise ValueError(f"--step-mode {mode} needs a CUDA device and PyTorch 2 (this is PyTorch {torch.__version__} "
                         f"on {dev.type})")
    if mode == "graphed" and short:
        raise ValueError(f"--step-mode graphed needs at least one whole batch of training images ({train_images} "
                         f"images, batch {batch_size})")
    return mode


def step_function(model, mode, example):
    """The callable that training steps run `model` (a QatModel) through, for a step mode:
    eager (every operation from Python), compiled (the fused epilogue of each convolution
    compiled by torch.compile: CUDA, PyTorch 2) or graphed (compiled, and the whole forward and
    backward pass replayed as one CUDA graph, captured here for inputs shaped like `example`;
    the model then runs its ordinary forward pass only in eval mode)."""
    mode = check_step_mode(mode, example.device)
    arith.KERNELS.compile = mode != "eager"
    if mode == "graphed":
        model.train()
        return torch.cuda.make_graphed_callables(model, (example,), allow_unused_input=True)
    return model


def teacher_function(teacher, mode, example):
    """The callable that gives the distillation teacher's logits: `teacher` itself, or in step
    mode graphed its no-grad forward pass captured once as a CUDA graph for inputs shaped like
    `example` and replayed (the returned tensor is overwritten by the next call)."""
    if mode != "graphed":
        return teacher
    static_x = example.clone()
    side = torch.cuda.Stream(device=example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture (library handles, workspaces)
            teacher(static_x)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.no_grad(), torch.cuda.graph(graph):
            static_y = teacher(static_x)
    except RuntimeError as e:  # a capture PyTorch refuses: the teacher still works eagerly
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"nibble_qat: the teacher's forward pass could not be captured as a CUDA graph ({first[:200]}); "
              f"running it eagerly", file=sys.stderr)
        return teacher

    def replay(x):
        static_x.copy_(x)
        graph.replay()
        return static_y

    return replay


def forward_backward(model, teacher, distill, x, y):
    """One training step's logits and loss (cross-entropy, with distillation from `teacher`), with
    the gradients accumulated."""
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    if distill > 0:
        with torch.no_grad():
            target = F.log_softmax(teacher(x).float(), dim=1)
        kd = F.kl_div(F.log_softmax(logits.float(), dim=1), target, log_target=True, reduction="batchmean")
        loss = (1.0 - distill) * loss + distill * kd
    loss.backward()
    return logits, loss


_CHECKPOINT_KEYS = ("model", "optimizer", "generator", "epoch", "step", "history", "settings")


def _load_checkpoint(path):
    """The checkpoint dict of `path`; a ValueError naming the file when it is not one of ours."""
    try:
        state = torch.load(path, map_location="cpu")
    except Exception as e:  # torch.load raises unpickling, zip and EOF errors of many types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a readable checkpoint ({first}); remove it to start over") from None
    if not isinstance(state, dict) or any(k not in state for k in _CHECKPOINT_KEYS):
        raise ValueError(f"{path}: not a nibble_qat checkpoint (missing entries); remove it to start over")
    return state


def evaluate(model, images, labels, device, batch=500, exact=False, progress=None, to_input=None):
    """Top-1 (correct count) and the logits of `model` on u8 images (`to_input(images, device)`
    makes a batch the model's input; default: Fashion-MNIST's scaling)."""
    was, was_training = model.exact, model.training
    model.exact = exact
    model.eval()  # a graphed model (step_function) runs its ordinary forward pass in eval mode
    correct, outs = 0, []
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                x = (to_input(images[i:i + batch], device) if to_input else
                     data_io.to_input(images[i:i + batch], model.input_shape[-1], device))
                y = model(x).float()
                outs.append(y.cpu())
                correct += int((y.argmax(1).cpu() == torch.from_numpy(labels[i:i + batch])).sum())
                if progress:
                    progress.update(len(x))
    finally:
        model.exact = was
        model.train(was_training)
    return correct, torch.cat(outs) if outs else torch.zeros(0)


def write_outputs(model, out_dir, note):
    """The trained FP32 ONNX model and the calibration table with the learned ranges (none for
    precision float: its activations changed, so the model is calibrated again)."""
    data = model.onnx.save(None, model.onnx_initializers())
    _atomic_bytes(data, os.path.join(out_dir, MODEL))
    if model.precision == "float":
        return
    table = calib_io.with_ranges(model.calib, model.learned_ranges(), note)
    calib_io.write(table, os.path.join(out_dir, TABLE))


def finetune(model, out_dir, epochs=15, batch_size=128, lr=0.005, weight_decay=5e-4, range_lr=None,
             data_dir=data_io.DEFAULT_DIR, device="cpu", seed=0, limit_train=0, limit_test=0, max_steps=0,
             resume=False, log=print, settings=None, teacher=None, distill=0.0, step_mode="auto",
             teacher_graph=True, sparsity=None, data=None):
    """Fine-tunes `model` (a QatModel) and writes OUT/{model.onnx, model.calib, checkpoint.pt,
    finetune.json}. Returns the history (one dict per epoch). `settings` (a dict) is stored in
    the checkpoint; a resumed run must have the same. With a `teacher` (a module giving logits, such as
    the FP32 model) and `distill` in (0, 1], the loss is (1 - distill) * cross-entropy + distill *
    KL(teacher || model), at temperature 1. `data` (data.Data: an image folder) replaces Fashion-MNIST. `step_mode` is one of STEP_MODES (step_function;
    docs/qat.md, "Training speed"); in step mode graphed the teacher's forward pass is a CUDA graph
    too unless `teacher_graph` is False (teacher_function). `sparsity` ("2:4") keeps the zeros of
    the model's 2:4-sparse layers (a model pruned by `nibble prune`) through every step."""
    if not 0.0 <= distill <= 1.0:
        raise ValueError(f"--distill must be between 0 and 1, got {distill}")
    if distill > 0 and teacher is None:
        raise ValueError("distillation needs a teacher model")
    settings = dict(settings or {})
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    if os.path.exists(ckpt_path) and not resume:
        raise FileExistsError(f"{out_dir}: holds a checkpoint of an earlier run; pass --resume to continue it, or "
                              f"choose another output directory")
    dev = training_device(device)
    model.to(dev)
    masker = None
    if sparsity:
        mask = sparsity_io.masks(model, sparsity)
        masker = sparsity_io.Masker(model, mask).to(dev)
        kept = sum(int(m.sum()) for m in mask.values())
        log(f"sparsity {sparsity}: {len(mask)} layers keep their zeros ({kept} of "
            f"{sum(m.numel() for m in mask.values())} weights non-zero)")
    if distill > 0:
        teacher.to(dev).eval().requires_grad_(False)
    if data is None:
        if model.input_shape[0] != 1:
            raise ValueError(f"Fashion-MNIST gives 1-channel images, the model takes {model.input_shape[0]} channels "
                             f"(train on an image folder: --data DIR)")
        data = data_io.fashion_mnist(data_dir, model.input_shape[-1])
    train_x, train_y, test_x, test_y = data.train_x, data.train_y, data.test_x, data.test_y
    if limit_train:
        train_x, train_y = train_x[:limit_train], train_y[:limit_train]
    if limit_test:
        test_x, test_y = test_x[:limit_test], test_y[:limit_test]
    step_mode = check_step_mode(step_mode, dev, batch_size, len(train_x))

    ranges = [p for p in model.thresholds.values() if p.requires_grad]
    weights = [p for n, p in model.named_parameters() if not n.startswith("thresholds.") and p.dim() > 1]
    others = [p for n, p in model.named_parameters() if not n.startswith("thresholds.") and p.dim() <= 1]
    groups = [{"params": weights, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    if ranges:
        groups.append({"params": ranges, "weight_decay": 0.0, "lr": range_lr if range_lr is not None else lr})
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    steps_per_epoch = max(1, len(train_x) // batch_size)
    total_steps = epochs * steps_per_epoch if not max_steps else min(max_steps, epochs * steps_per_epoch)
    gen = torch.Generator()
    gen.manual_seed(seed)
    start_epoch, step, history = 0, 0, []
    if resume and os.path.exists(ckpt_path):
        state = _load_checkpoint(ckpt_path)
        old = state["settings"] or {}
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{ckpt_path}: was made with other settings ({', '.join(changed)}); resume with the same "
                             f"model, table and options, or choose another output directory")
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{ckpt_path}: does not fit this model ({str(e).splitlines()[0]})") from None
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        log(f"resumed from {ckpt_path}: epoch {start_epoch}/{epochs} done, step {step}")
    elif start_epoch == 0:
        p = Progress("eval (before fine-tuning)", len(test_x))
        correct, _ = evaluate(model, test_x, test_y, dev, progress=p, to_input=data.input)
        p.close()
        note = "no training" if model.precision == "float" else "the calibrated ranges, no training"
        log(f"epoch  0/{epochs}  test top-1 {100 * correct / len(test_x):.2f}% ({note})")
        history.append({"epoch": 0, "test_top1": correct / len(test_x), "steps": 0})

    run, teacher_run = model, teacher
    if start_epoch < epochs and step < total_steps:
        t0 = time.time()
        example = torch.zeros((batch_size,) + model.input_shape, device=dev)
        run = step_function(model, step_mode, example)
        if distill > 0 and teacher_graph:
            teacher_run = teacher_function(teacher, step_mode, example)
        captured = "the training step" + (" and the teacher's forward pass" if teacher_run is not teacher else "")
        log(f"step mode {step_mode}" + (f": captured {captured} as CUDA graphs ({time.time() - t0:.0f} s)"
                                        if step_mode == "graphed" else ""))
    train_x_t = torch.from_numpy(np.ascontiguousarray(train_x).copy())
    train_y_t = torch.from_numpy(train_y.copy())
    for epoch in range(start_epoch, epochs):
        if step >= total_steps:
            break
        t0 = time.time()
        order = torch.randperm(len(train_x_t), generator=gen)
        bar = Progress(f"epoch {epoch + 1}/{epochs}", min(steps_per_epoch, total_steps - step))
        # Sums on the device, read for the progress bar every few steps: a read waits for the
        # device, and the host is best left queueing the next steps' work meanwhile.
        loss_sum, seen, correct = torch.zeros((), dtype=torch.float64, device=dev), 0, torch.zeros((), dtype=torch.int64, device=dev)
        shown = ""
        for b in range(steps_per_epoch):
            if step >= total_steps:
                break
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb = data_io.augment(train_x_t[idx], gen)
            x = data.input(xb.numpy(), dev)
            y = train_y_t[idx].to(dev)
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            opt.zero_grad(set_to_none=True)
            logits, loss = forward_backward(run, teacher_run, distill, x, y)
            if masker:
                masker.gradients()
            opt.step()
            if masker:
                masker.weights()
            model.clamp_thresholds()
            step += 1
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            correct += (logits.argmax(1) == y).sum()
            if b % 25 == 0:
                shown = f"loss {float(loss_sum) / seen:.4f}"
            bar.update(1, shown)
        bar.close()
        loss_sum, correct = float(loss_sum), int(correct)
        train_secs = time.time() - t0
        p = Progress("eval", len(test_x))
        test_correct, _ = evaluate(model, test_x, test_y, dev, progress=p, to_input=data.input)
        p.close()
        rec = {"epoch": epoch + 1, "steps": step, "train_loss": loss_sum / max(seen, 1),
               "train_top1": correct / max(seen, 1), "test_top1": test_correct / len(test_x),
               "seconds": round(time.time() - t0, 2)}
        history.append(rec)
        write_outputs(model, out_dir, f"ranges after {epoch + 1} epochs of nibble_qat finetune "
                                      f"(precision {model.precision})")
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                      "epoch": epoch + 1, "step": step, "history": history, "settings": settings}, ckpt_path)
        _atomic_bytes(json.dumps({"settings": settings, "history": history}, indent=1).encode(),
                      os.path.join(out_dir, LOG))
        log(f"epoch {epoch + 1:2d}/{epochs}  loss {rec['train_loss']:.4f}  train top-1 {100 * rec['train_top1']:.2f}%  "
            f"test top-1 {100 * rec['test_top1']:.2f}%  ({train_secs:.0f} s train, {rec['seconds']:.0f} s total)")
    if not os.path.exists(os.path.join(out_dir, MODEL)):
        write_outputs(model, out_dir, f"ranges of nibble_qat finetune (precision {model.precision}, no steps run)")
    return history
