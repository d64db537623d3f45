"""An FP32 ONNX model rebuilt as a trainable PyTorch module that computes what `nibble quantize`
makes of it.

The layer structure follows src/quant/quantize.cpp step for step: a convolution absorbs the
BatchNormalization, constant Add, residual Add and ReLU after it; a Gemm or MatMul absorbs a
constant Add and a ReLU; the first and last layers stay at 8 bits; every tensor is quantized at
the widest width its integer readers need; a convolution read only as another's residual keeps
its accumulators, which that convolution rescales into its own accumulator scale; a final
linear layer without ReLU gives its accumulators divided by their scale. In the forward pass
each quantized tensor holds integers (with their scale alongside), so the values are the
engine's own; see docs/qat.md.
"""

import re

import numpy as np
import torch
import torch.nn.functional as F

from . import arith

PRECISIONS = ("int8", "int4", "w4a8")
WEIGHT_BITS = {"int8": 8, "int4": 4, "w4a8": 4}
ACTIVATION_BITS = {"int8": 8, "int4": 4, "w4a8": 8}

QUANTIZABLE_OPS = ("Conv", "BatchNormalization", "Gemm", "MatMul", "Relu", "Add", "MaxPool", "AveragePool",
                   "GlobalAveragePool", "Flatten", "Identity", "Dropout")


_BN_EPSILON = arith.f32(1e-5)  # ONNX's default, as an f32 attribute


class UnsupportedModel(ValueError):
    """A model (or option) that quantization-aware training cannot express; the message says why."""


class Unit:
    CONV, LINEAR, MAX_POOL, AVG_POOL, PASS, RELU, ADD = "conv", "linear", "max_pool", "avg_pool", "pass", "relu", "add"

    def __init__(self, kind, node):
        self.kind = kind
        self.node = node
        self.name = ""
        self.input = node.inputs[0] if node.inputs else ""
        self.input2 = ""
        self.output = node.outputs[0] if node.outputs else ""
        self.bn = None            # the BatchNormalization node folded in
        self.const_adds = []      # initializer names of constant Adds joined to the bias
        self.relu_after = False
        self.residual_only = False
        self.precision = "float"
        self.args = None          # static arguments of the forward pass (_static_args)


def layer_name_of(node, index):
    """The layer name the quantizer gives an ONNX node ("/layer1/layer1.0/conv1/Conv" ->
    "layer1_layer1_0_conv1")."""
    s = node.name.lstrip("/")
    slash = s.rfind("/")
    if slash >= 0 and s[slash + 1:] == node.op_type:
        s = s[:slash]
    if not s:
        s = f"{node.op_type}_{index}"
    out = ""
    for c in s:
        if c.isascii() and (c.isalnum() or c == "-"):
            out += c
        elif not out or out[-1] != "_":
            out += "_"
    out = out.rstrip("_")
    if not out or out in ("model", "npdata"):
        out = f"{node.op_type}_{index}"
    return out


def build_units(model, calib=None, requantize_shortcuts=True):
    """The quantizer's units of an ONNX model, in order (Quantizer::build_units). A conv read only
    by a later conv's residual Add hands over its accumulators (residual_only) unless
    requantize_shortcuts and `calib` has a range for its output (quantize's default)."""
    readers = {}
    for n in model.nodes:
        for i in n.inputs:
            if i:
                readers.setdefault(i, []).append(n)
    outputs = set(model.outputs)

    def sole(v, op):
        if v in outputs:
            return None
        r = readers.get(v, [])
        return r[0] if len(r) == 1 and r[0].op_type == op else None

    absorbed, producer, units, names = set(), {}, [], set()
    available = {v[0] for v in model.inputs}
    for i, n in enumerate(model.nodes):
        if i > 0:
            available.update(model.nodes[i - 1].outputs)
        if id(n) in absorbed:
            continue
        if n.op_type == "Conv":
            u = Unit(Unit.CONV, n)
            _check_conv(model, n)
            v = u.output
            bn = sole(v, "BatchNormalization")
            if bn is not None:
                u.bn = bn
                absorbed.add(id(bn))
                v = bn.outputs[0]
            v = _absorb_constant_add(model, v, u, sole, absorbed)
            add = sole(v, "Add")
            if add is not None:
                other = add.inputs[1] if add.inputs[0] == v else add.inputs[0]
                if other in available and other != v:
                    u.input2 = other
                    absorbed.add(id(add))
                    v = add.outputs[0]
            relu = sole(v, "Relu")
            if relu is not None:
                u.relu_after = True
                absorbed.add(id(relu))
                v = relu.outputs[0]
            u.output = v
        elif n.op_type in ("Gemm", "MatMul"):
            u = Unit(Unit.LINEAR, n)
            _check_linear(model, n)
            u.output = _absorb_constant_add(model, u.output, u, sole, absorbed)
            relu = sole(u.output, "Relu")
            if relu is not None:
                u.relu_after = True
                absorbed.add(id(relu))
                u.output = relu.outputs[0]
        elif n.op_type == "MaxPool":
            u = Unit(Unit.MAX_POOL, n)
        elif n.op_type in ("GlobalAveragePool", "AveragePool"):
            u = Unit(Unit.AVG_POOL, n)
        elif n.op_type in ("Flatten", "Identity", "Dropout"):
            u = Unit(Unit.PASS, n)
        elif n.op_type == "Relu":
            u = Unit(Unit.RELU, n)
        elif n.op_type == "Add":
            u = Unit(Unit.ADD, n)
            u.input2 = n.inputs[1]
        else:
            raise UnsupportedModel(f"{model.path}: {n.label()}: nibble quantize has no layer for op {n.op_type} "
                                   f"(supported: {', '.join(QUANTIZABLE_OPS)})")
        base = layer_name_of(n, i)
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        u.name = name
        producer[u.output] = len(units)
        units.append(u)
    for u in units:
        if u.kind != Unit.CONV or not u.input2 or u.input2 not in producer:
            continue
        if requantize_shortcuts and calib is not None and calib.find(u.input2) is not None:
            continue
        r = units[producer[u.input2]]
        if (r.kind == Unit.CONV and not r.relu_after and not r.input2 and len(readers.get(u.input2, [])) == 1
                and u.input2 not in outputs):
            r.residual_only = True
    return units


def _static_args(u):
    """The node attributes the forward pass needs, read and checked once when the model is built
    rather than in every step."""
    n = u.node
    if u.kind == Unit.CONV:
        pads = list(n.attrs.get("pads", [0, 0, 0, 0]))
        eps = float(u.bn.attrs.get("epsilon", _BN_EPSILON)) if u.bn is not None else None
        return {"stride": tuple(n.attrs.get("strides", [1, 1])), "padding": (pads[0], pads[1]),
                "dilation": tuple(n.attrs.get("dilations", [1, 1])), "groups": n.attrs.get("group", 1), "eps": eps}
    if u.kind == Unit.LINEAR:
        return {"trans_b": n.op_type == "Gemm" and n.attrs.get("transB", 0) != 0}
    if u.kind in (Unit.MAX_POOL, Unit.AVG_POOL):
        if n.op_type == "GlobalAveragePool":
            return {"k": None, "s": 1, "p": 0}
        ks, st = list(n.attrs.get("kernel_shape", [])), list(n.attrs.get("strides", [1, 1]))
        pd = list(n.attrs.get("pads", [0, 0, 0, 0]))
        if (len(ks) != 2 or ks[0] != ks[1] or len(st) != 2 or st[0] != st[1] or len(pd) != 4
                or len(set(pd)) != 1 or n.attrs.get("ceil_mode", 0) != 0):
            raise UnsupportedModel(f"{n.label()}: only square pools with equal strides and pads are supported")
        if u.kind == Unit.AVG_POOL and pd[0] != 0:
            raise UnsupportedModel(f"{n.label()}: padded average pools are not supported by quantize")
        return {"k": ks[0], "s": st[0], "p": pd[0]}
    return {}


def _weight_rows(model, u):
    w = model.initializers[u.node.inputs[1]]
    if u.kind == Unit.CONV:
        return w.shape[0]
    trans_b = u.node.op_type == "Gemm" and u.node.attrs.get("transB", 0) != 0
    return w.shape[0] if trans_b else w.shape[1]


def _absorb_constant_add(model, v, u, sole, absorbed):
    add = sole(v, "Add")
    if add is None:
        return v
    other = add.inputs[1] if add.inputs[0] == v else add.inputs[0]
    c = model.initializers.get(other)
    k = _weight_rows(model, u)
    if c is None or c.size != k:
        return v
    shapes = [(k,), (1, k)] if u.kind == Unit.LINEAR else [(k, 1, 1), (1, k, 1, 1)]
    if tuple(c.shape) not in shapes:
        return v
    u.const_adds.append(other)
    absorbed.add(id(add))
    return add.outputs[0]


def _initializer(model, n, i, what):
    if i >= len(n.inputs) or not n.inputs[i]:
        raise UnsupportedModel(f"{model.path}: {n.label()}: {what} is missing")
    if n.inputs[i] not in model.initializers:
        raise UnsupportedModel(f"{model.path}: {n.label()}: {what} '{n.inputs[i]}' is not a constant initializer")
    return model.initializers[n.inputs[i]]


def _check_conv(model, n):
    w = _initializer(model, n, 1, "the weight")
    if w.ndim != 4:
        raise UnsupportedModel(f"{model.path}: {n.label()}: only 2-D convolutions can be quantized")
    if n.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise UnsupportedModel(f"{model.path}: {n.label()}: auto_pad is not supported by quantize")
    pads = list(n.attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise UnsupportedModel(f"{model.path}: {n.label()}: asymmetric padding is not supported by quantize")


def _check_linear(model, n):
    w = _initializer(model, n, 1, "the weight")
    if w.ndim != 2:
        raise UnsupportedModel(f"{model.path}: {n.label()}: the weight must be 2-D")
    if n.op_type == "Gemm" and (n.attrs.get("transA", 0) != 0 or n.attrs.get("alpha", 1.0) != 1.0
                                or n.attrs.get("beta", 1.0) != 1.0):
        raise UnsupportedModel(f"{model.path}: {n.label()}: only Gemm with transA=0, alpha=1, beta=1 can be quantized")


def _param_name(onnx_name):
    return "p_" + re.sub(r"[^0-9A-Za-z_]", "_", onnx_name)


class QatModel(torch.nn.Module):
    """The fake-quantized model. `forward(x)` returns the model's first output (f32 logits).

    Parameters are the ONNX model's float initializers (convolution and linear weights and
    biases, BatchNormalization scale and bias; the running mean and variance stay fixed, as the
    engine folds them) and, with `learn_ranges`, one clipping threshold per quantized tensor.
    `exact=True` computes the integer parts in float64 so that the results equal the engine's
    bit for bit; the default float32 computation is the same arithmetic, faster, for training.
    Precision "float" gives the FP32 model itself (BatchNormalization folded with its running
    statistics), the teacher of distillation.
    """

    def __init__(self, model, calib, precision="int4", first_last_8bit=True, layer_precision=None,
                 learn_ranges=False, requantize_shortcuts=True):
        super().__init__()
        if precision not in PRECISIONS + ("float",):
            raise UnsupportedModel(f"precision '{precision}': fine-tuning supports {', '.join(PRECISIONS)}")
        if len(model.inputs) != 1:
            raise UnsupportedModel(f"{model.path}: quantize needs a model with one input, this one has "
                                   f"{len(model.inputs)}")
        name, elem, shape = model.inputs[0]
        if elem != 1:
            raise UnsupportedModel(f"{model.path}: the input '{name}' must be f32")
        if not shape or len(shape) < 2 or any(d is None or d <= 0 for d in shape[1:]):
            raise UnsupportedModel(f"{model.path}: the input '{name}' needs a known shape")
        self.onnx = model
        self.input_name = name
        self.input_shape = tuple(shape[1:])
        self.precision = precision
        self.calib = calib
        self.learn_ranges = learn_ranges
        self.exact = False
        self.fused = True  # float32 forward: the steps after each convolution in one node (emit_fused)
        self.output_step = {}  # graph output -> the value of one accumulator step per channel
        self.units = build_units(model, calib, requantize_shortcuts)
        for u in self.units:
            u.args = _static_args(u)
        self._assign_precisions(first_last_8bit, layer_precision or {})
        self._assign_bits()
        for t in calib.tensors():
            if t not in self._all_tensors():
                raise UnsupportedModel(f"{calib.path}: the calibration table names tensor '{t}', which the model "
                                       f"does not have")
        self._params = {}
        trainable, fixed = set(), set()
        for u in self.units:
            if u.kind == Unit.CONV or u.kind == Unit.LINEAR:
                trainable.update(x for x in u.node.inputs[1:3] if x)
                trainable.update(u.const_adds)
                if u.bn is not None:
                    trainable.update(u.bn.inputs[1:3])
                    fixed.update(u.bn.inputs[3:5])
        for onnx_name in sorted(trainable | fixed):
            arr = model.initializers[onnx_name]
            if arr.dtype != np.float32:
                raise UnsupportedModel(f"{model.path}: initializer '{onnx_name}' is {arr.dtype}, not float32")
            t = torch.from_numpy(arr.copy())
            if onnx_name in fixed:
                self.register_buffer(_param_name(onnx_name), t)
            else:
                self.register_parameter(_param_name(onnx_name), torch.nn.Parameter(t))
        self.thresholds = torch.nn.ParameterDict()
        self._ranges = {}       # tensor -> (bits, signed, fixed)
        self._threshold_keys = {}
        self._building = True
        with torch.no_grad():
            self.forward(torch.zeros((1,) + self.input_shape))
        self._building = False

    # --- plan -----------------------------------------------------------------------------------

    def _all_tensors(self):
        names = {self.input_name}
        for n in self.onnx.nodes:
            names.update(n.outputs)
        return names

    def _assign_precisions(self, first_last_8bit, layer_precision):
        layers = [u for u in self.units if u.kind in (Unit.CONV, Unit.LINEAR)]
        used = set()
        for u in layers:
            u.precision = self.precision
            named = False
            for key in (u.name, u.node.name):
                if key in layer_precision:
                    if layer_precision[key] not in PRECISIONS:
                        raise UnsupportedModel(f"--layer-precision {key}: fine-tuning supports {', '.join(PRECISIONS)}")
                    u.precision = layer_precision[key]
                    used.add(key)
                    named = True
            if (not named and first_last_8bit and layers and (u is layers[0] or u is layers[-1])
                    and self.precision != "float"):
                u.precision = "int8"
        for key in layer_precision:
            if key not in used:
                raise UnsupportedModel(f"--layer-precision: no conv or linear layer is named '{key}'")

    def _assign_bits(self):
        self._bits = {}
        for u in reversed(self.units):
            if u.kind in (Unit.CONV, Unit.LINEAR) and u.precision != "float":
                self._need_bits(u.input, ACTIVATION_BITS[u.precision])
            elif u.kind in (Unit.MAX_POOL, Unit.AVG_POOL, Unit.PASS, Unit.RELU) and u.output in self._bits:
                self._need_bits(u.input, self._bits[u.output])

    def _need_bits(self, t, bits):
        self._bits[t] = max(self._bits.get(t, 0), bits)

    def bits_of(self, t):
        return self._bits[t] if t in self._bits and self._bits[t] else 8

    def quantized_layers(self):
        """(layer name, ONNX node name, precision) of every conv and linear layer."""
        return [(u.name, u.node.name, u.precision) for u in self.units if u.kind in (Unit.CONV, Unit.LINEAR)]

    # --- parameters -----------------------------------------------------------------------------

    def _tensor(self, onnx_name):
        key = _param_name(onnx_name)
        return getattr(self, key)

    def onnx_initializers(self):
        """The trained float initializers, by ONNX name (numpy f32), for writing the model back."""
        out = {}
        for u in self.units:
            if u.kind not in (Unit.CONV, Unit.LINEAR):
                continue
            names = [x for x in u.node.inputs[1:3] if x] + u.const_adds + (list(u.bn.inputs[1:3]) if u.bn else [])
            for n in names:
                out[n] = self._tensor(n).detach().cpu().numpy().astype(np.float32)
        return out

    def _threshold(self, t, bits, is_signed, non_negative, numel):
        """The scale of tensor t from its learned (or fixed) clipping threshold; `numel` is the
        tensor's size per sample."""
        key = self._threshold_keys[t] if t in self._threshold_keys else None
        if key is None:
            if not self._building:
                raise RuntimeError(f"internal: tensor '{t}' was not planned")
            e = self.calib.find(t)
            if e is None:
                raise UnsupportedModel(f"{self.calib.path}: the calibration table has no range for tensor '{t}'")
            lo, hi = e.lo, e.hi
            top = max(hi, 0.0) if non_negative else max(abs(lo), abs(hi))
            key = f"t{len(self._threshold_keys)}"
            self._threshold_keys[t] = key
            scale = arith.f32(top / arith.levels(bits, is_signed)) if top > 0 else 0.0
            fixed = not (scale > 0 and np.isfinite(scale))
            # An empty range gets scale 1, as in the quantizer, and stays fixed.
            value = float(arith.levels(bits, is_signed)) if fixed else top
            p = torch.nn.Parameter(torch.tensor(value, dtype=torch.float32), requires_grad=self.learn_ranges and not fixed)
            self.thresholds[key] = p
            self._ranges[t] = (bits, is_signed, fixed)
        p = self.thresholds[key]
        if p.requires_grad:
            # LSQ scales the gradient of the step size s by 1 / sqrt(features * levels); the
            # threshold is t = s * levels, so its gradient takes levels^2 more for the same step.
            lv = arith.levels(bits, is_signed)
            p = arith.lsq_grad_scale(p, lv * lv / (max(numel, 1) * lv) ** 0.5)
        return arith.activation_scale(p, bits, is_signed)

    def learned_ranges(self):
        """{tensor: (lo, hi)} for the calibration table: [-t, t] for signed tensors, [lo, t] for
        unsigned ones (lo as calibrated, at most t), with t the current threshold."""
        out = {}
        for t, key in self._threshold_keys.items():
            bits, is_signed, fixed = self._ranges[t]
            if fixed:
                continue
            thr = float(self.thresholds[key].detach().cpu())
            e = self.calib.find(t)
            out[t] = (-thr, thr) if is_signed else (min(e.lo, thr), thr)
        return out

    def clamp_thresholds(self):
        """Keeps every threshold positive after an optimizer step."""
        with torch.no_grad():
            for p in self.thresholds.values():
                p.clamp_(min=1e-8)

    # --- forward --------------------------------------------------------------------------------

    def forward(self, x):
        return self.run(x)[0]

    def run(self, x):
        """All graph outputs as f32 tensors."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input shape {tuple(x.shape)} does not match the model's [N, "
                             f"{', '.join(map(str, self.input_shape))}]")
        st = _State(self, x.to(torch.float32))
        for u in self.units:
            st.emit(u)
        return [st.need_float(o) for o in self.onnx.outputs]


def _apply(u, x, w, b=None):
    """The convolution (with the node's strides, pads, dilations and groups) or linear layer of u."""
    if u.kind == Unit.CONV:
        a = u.args
        return F.conv2d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"])
    return F.linear(x.reshape(x.shape[0], -1), w, b)


class _State:
    """The values of one forward pass: for each ONNX tensor its integer form (q, scale, bits,
    signed), its unrescaled accumulators (acc, per-channel scale) or its f32 form."""

    def __init__(self, m, x):
        self.m = m
        self.ct = torch.float64 if m.exact else torch.float32  # dtype of integer-valued tensors
        # Checks that need the values on the host (a sync on a GPU): when building and in exact mode.
        self.check = m.exact or m._building
        self.alias, self.quant, self.acc, self.float = {}, {}, {}, {m.input_name: x}

    def resolve(self, t):
        while t in self.alias:
            t = self.alias[t]
        return t

    # Quantizer::need_quantized
    def need_quantized(self, tensor):
        t = self.resolve(tensor)
        if t in self.quant:
            return self.quant[t]
        if t not in self.float:
            raise RuntimeError(f"internal: tensor '{t}' has no value")
        bits = self.m.bits_of(t)
        e = self.m.calib.find(t)
        is_signed = e is not None and e.lo < 0
        s = self.m._threshold(t, bits, is_signed, False, self.float[t][0].numel())
        rng = arith.output_range(arith.magnitude_bits(bits, is_signed), is_signed)
        q = arith.quantize_float(self.float[t].to(torch.float32), s.to(torch.float32), rng).to(self.ct)
        self.quant[t] = (q, s, bits, is_signed)
        return self.quant[t]

    # Quantizer::need_float
    def need_float(self, tensor):
        t = self.resolve(tensor)
        if t in self.float:
            return self.float[t]
        if t in self.acc:
            a, s = self.acc[t]
            shape = [1, -1] + [1] * (a.dim() - 2)
            v = a.to(torch.float32) * s.to(torch.float32).view(shape)
        elif t in self.quant:
            q, s, _, _ = self.quant[t]
            v = q.to(torch.float32) * s.to(torch.float32)
        else:
            raise RuntimeError(f"internal: tensor '{t}' has no value")
        self.float[t] = v
        return v

    def emit(self, u):
        if u.kind in (Unit.CONV, Unit.LINEAR):
            if u.precision == "float":
                self.emit_float(u)
            else:
                self.emit_integer(u)
        elif u.kind == Unit.PASS:
            self.alias[u.output] = self.resolve(u.input)
        elif u.kind == Unit.RELU:
            t = self.resolve(u.input)
            if t in self.quant and not self.quant[t][3]:
                self.alias[u.output] = t
            else:
                self.float[u.output] = F.relu(self.need_float(t))
        elif u.kind == Unit.ADD:
            self.float[u.output] = self.need_float(u.input) + self.need_float(u.input2)
        else:
            self.emit_pool(u)

    def emit_pool(self, u):
        n = u.node
        t = self.resolve(u.input)
        k, s, p = u.args["k"], u.args["s"], u.args["p"]
        integer = t in self.quant and (u.kind == Unit.MAX_POOL or not self.quant[t][3])
        if integer:
            q, sc, bits, sg = self.quant[t]
            kk = k if k is not None else q.shape[-1]
            if k is None and q.shape[-1] != q.shape[-2]:
                raise UnsupportedModel(f"{n.label()}: needs a square input")
            if u.kind == Unit.MAX_POOL:
                y = F.max_pool2d(q, kk, s, p)
            else:
                y = arith.average_pool(q, kk, s if k is not None else kk)
            self.quant[u.output] = (y, sc, bits, sg)
            return
        x = self.need_float(t)
        if n.op_type == "GlobalAveragePool":
            y = x.mean(dim=(2, 3), keepdim=True)
        elif u.kind == Unit.MAX_POOL:
            y = F.max_pool2d(x, k, s, p)
        else:
            y = F.avg_pool2d(x, k, s)
        self.float[u.output] = y

    # --- conv and linear layers -----------------------------------------------------------------

    def folded(self, u, dtype):
        """The layer's weight (K x C/g x R x S, or K x C) and bias (K) with BatchNormalization and
        constant Adds folded in, computed in `dtype` as Quantizer::fold_* does in double."""
        m = self.m
        n = u.node
        w = m._tensor(n.inputs[1]).to(dtype)
        if u.kind == Unit.LINEAR:
            if not u.args["trans_b"]:
                w = w.t()
            k = w.shape[0]
            b = torch.zeros(k, dtype=dtype, device=w.device)
            if n.op_type == "Gemm" and len(n.inputs) > 2 and n.inputs[2]:
                b = m._tensor(n.inputs[2]).to(dtype).reshape(k)
        else:
            k = w.shape[0]
            b = torch.zeros(k, dtype=dtype, device=w.device)
            if len(n.inputs) > 2 and n.inputs[2]:
                b = m._tensor(n.inputs[2]).to(dtype).reshape(k)
            if u.bn is not None:
                gamma, beta, mean, var = (m._tensor(x).to(dtype).reshape(k) for x in u.bn.inputs[1:5])
                eps = u.args["eps"]
                a = gamma / torch.sqrt(var + eps)
                w = w * a.view(-1, 1, 1, 1)
                b = (b - mean) * a + beta
        for c in u.const_adds:
            b = b + m._tensor(c).to(dtype).reshape(k)
        return w, b

    def emit_integer(self, u):
        m = self.m
        q_x, s_x, _, _ = self.need_quantized(u.input)
        wb = WEIGHT_BITS[u.precision]
        lv = arith.levels(wb, True)
        w32, b32 = self.folded(u, torch.float32)
        res = self.residual_source(u)
        with torch.no_grad():
            w64, b64 = self.folded(u, torch.float64)
            s_w = arith.weight_scale(w64, wb)
            s_x_exact = s_x.detach()
            dead = arith.dead_channels(b64, s_x_exact * s_w, None if res is None else res[1].detach())
            s_w = torch.where(dead, torch.ones_like(s_w), s_w)
            w_exact = arith.quantize_weight_exact(w64, s_w, wb)
            keep = (~dead).to(torch.float64).view([-1] + [1] * (w64.dim() - 1))
            w_exact = w_exact * keep
        shape_w = [-1] + [1] * (w32.dim() - 1)
        w_sur = arith._clamp_ste(arith.round_ste(w32 / s_w.to(torch.float32).view(shape_w)), (-lv, lv))
        w_int = arith.with_value(w_sur * keep.to(torch.float32), w_exact).to(self.ct)
        acc_scale = s_x * s_w  # float64, exact products of two f32 values
        with torch.no_grad():
            acc_exact = acc_scale.detach()
            bias_exact = torch.round(b64 / acc_exact)
        bias_int = arith.with_value(arith.round_ste(b32 / acc_scale.to(torch.float32)), bias_exact).to(self.ct)

        acc = _apply(u, q_x.to(self.ct), w_int)
        shape = [1, -1] + [1] * (acc.dim() - 2)
        to_scale = u.kind == Unit.LINEAR and u.output in m.onnx.outputs and not u.relu_after
        if (m.fused and self.ct == torch.float32 and not u.residual_only and not to_scale
                and (res is None or not isinstance(res[0], str))):
            self.emit_fused(u, acc, bias_int, acc_scale, res)
            return
        # Sums of integers: exact in float64; in float32 rounding removes any error of the
        # convolution algorithm (while the sums stay below 2^24).
        acc = arith.round_ste(acc) + bias_int.view(shape)

        if res is not None:
            acc = acc + self.residual(res, acc_scale, acc.dim())
        if u.relu_after:
            acc = F.relu(acc)
        if u.residual_only:
            self.acc[u.output] = (acc, acc_scale)
            return
        if to_scale:
            with torch.no_grad():
                if self.check:
                    m.output_step[u.output] = acc_exact.cpu()
                inv = (1.0 / acc_exact).to(torch.float32)
                exact = acc.detach().to(torch.float32) / inv.view(shape)
            self.float[u.output] = arith.with_value(acc.to(torch.float32) * acc_scale.to(torch.float32).view(shape), exact)
            return
        s_out, bits, is_signed, ratio, shift, factor, rng = self.output_requant(u, acc_scale, acc[0].numel())
        q = arith.requantize(acc, ratio, [(factor, shift, arith.INT32_RANGE)], rng)
        self.quant[u.output] = (q, s_out, bits, is_signed)

    def output_requant(self, u, acc_scale, numel):
        """The output scale, bits, signedness, requantization (ratio, shift, factor) and range of
        unit u, whose accumulators have `numel` values per sample."""
        m = self.m
        bits = m.bits_of(u.output)
        e = m.calib.find(u.output)
        is_signed = e is not None and e.lo < 0 and not u.relu_after
        s_out = m._threshold(u.output, bits, is_signed, u.relu_after, numel)
        ratio = acc_scale / s_out
        rng = arith.output_range(arith.magnitude_bits(bits, is_signed), is_signed)
        shift, factor, fits = arith.choose_requant(ratio.detach(), arith.saturation_shift_limit(rng))
        if self.check and not bool(fits):
            raise UnsupportedModel(f"layer {u.name}: the output scale is too small for a 16-bit requantization factor")
        return s_out, bits, is_signed, ratio, shift, factor, rng

    def emit_fused(self, u, conv, bias_int, acc_scale, res):
        """The float32 (training) form of emit_integer's steps after the convolution, in one
        autograd node (arith.conv_epilogue); same values."""
        residual = self.residual_rescale(*res, acc_scale) if res is not None else None
        s_out, bits, is_signed, ratio, shift, factor, rng = self.output_requant(u, acc_scale, conv[0].numel())
        q = arith.conv_epilogue(conv, bias_int, ratio, factor, shift, rng, u.relu_after, residual)
        self.quant[u.output] = (q, s_out, bits, is_signed)

    def residual_source(self, u):
        """The residual operand of unit u: (integer tensor, its scale (0-d or per channel)), or
        ("float", f32 tensor) for a float residual, or None."""
        if not u.input2:
            return None
        r = self.resolve(u.input2)
        if r in self.acc:
            return self.acc[r]
        if r in self.quant or r not in self.float:
            q, s, _, _ = self.need_quantized(r)
            return q, s
        return "float", self.float[r]

    def residual(self, res, acc_scale, dim):
        """The residual in the accumulator scale of its unit (Quantizer::emit_integer)."""
        src, scale = res
        if isinstance(src, str):
            # A float residual is quantized straight into the accumulator scale (31 bits).
            s = acc_scale.to(torch.float32).view([1, -1] + [1] * (dim - 2))
            return arith._clamp_ste(arith.round_ste(scale / s), arith.INT32_RANGE).to(self.ct)
        src, ratio, stages = self.residual_rescale(src, scale, acc_scale)
        return arith.requantize(src, ratio, stages, arith.INT32_RANGE)

    def residual_rescale(self, src, scale, acc_scale):
        """An integer residual's values in the compute type, its scale over the accumulator scale
        and the requantization stages between them."""
        ratio = scale / acc_scale
        return src.to(self.ct), ratio, arith.residual_stages(ratio.detach())

    def emit_float(self, u):
        w, b = self.folded(u, torch.float32)
        y = _apply(u, self.need_float(u.input), w, b)
        if u.input2:
            y = y + self.need_float(u.input2)
        if u.relu_after:
            y = F.relu(y)
        self.float[u.output] = y
