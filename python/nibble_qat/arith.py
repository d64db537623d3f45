"""The engine's integer arithmetic, in PyTorch, with straight-through gradients.

Each function here restates one definition of src/quant/requant.h or src/quant/quantize.cpp
(docs/qat.md lists them side by side). On float64 tensors of integers every value is exact
(products stay below 2^53), so the results equal the engine's bit for bit; on float32 tensors
(training) the same formulas run with f32 products, which can differ only next to a rounding
tie. Gradients are the straight-through estimates of quantization-aware training:
rounding passes gradients unchanged, clamping stops them outside the range, and a
requantization passes them scaled by the real ratio it approximates.
"""

import torch


def output_range(bits, is_signed):
    """The clamp range of a `bits`-bit value: unsigned [0, 2^b - 1], signed [-(2^b - 1), 2^b - 1]
    (quant::output_range; the model directory's output_bits is the magnitude width)."""
    top = (1 << bits) - 1
    return (-top if is_signed else 0, top)


def levels(bits, is_signed):
    """Positive levels of a `bits`-bit activation or weight: 2^b - 1 unsigned, 2^(b-1) - 1 signed."""
    return (1 << (bits - 1)) - 1 if is_signed else (1 << bits) - 1


def magnitude_bits(bits, is_signed):
    """The output_bits of a b-bit value: b unsigned, b - 1 signed."""
    return bits - 1 if is_signed else bits


def f32(x):
    """A Python float rounded to the nearest f32 value (as static_cast<float>)."""
    return float(torch.tensor(x, dtype=torch.float64).to(torch.float32).item())


def pow2(k):
    """2^k for a tensor of integer-valued k in [-1022, 1023], exactly, as float64: the exponent
    field written directly (torch.pow on a GPU may be off by an ulp, which moves floor() at exact
    ties)."""
    bits = (k.to(torch.int64) + 1023) * (1 << 52)
    return bits.view(torch.float64)


def div(x, d):
    """x / d for a Python number d, as a true division on every device. (On a GPU PyTorch turns
    `tensor / number` into a product with the number's reciprocal, which can differ from the
    quotient in the last bit: enough to move a floor() or the rounding of an input.)"""
    return x / torch.full((), d, dtype=x.dtype, device=x.device)


def choose_requant(ratio, limit=31):
    """quant::choose_requant on a float64 tensor of ratios, on its device without a host sync:
    the largest shift in 0..31 such that every factor round_half_even(ratio * 2^shift) fits in
    u16, but at most `limit` unless a positive ratio's factor would be 0 there. Returns (shift,
    factor, fits): a 0-d float64 tensor, a float64 tensor of integers, and a 0-d bool tensor that
    is false when the largest ratio does not fit even with shift 0."""
    top = ratio.max()
    steps = torch.arange(1, 32, dtype=torch.float64, device=ratio.device)
    free = (torch.round(top * pow2(steps)) <= 65535.0).sum().to(torch.float64)
    capped = torch.clamp(free, max=float(limit))
    zero = ((ratio > 0) & (torch.round(ratio * pow2(capped)) == 0)).any()
    shift = torch.where(zero, free, capped)
    return shift, torch.round(ratio * pow2(shift)), top < 65535.5


def saturation_shift_limit(rng):
    """quant::saturation_shift_limit: the largest shift (0..31) with ((max(hi, -lo) + 1) << shift)
    + 65535 < 2^32 for the output range rng = (lo, hi)."""
    top = max(rng[1], -rng[0])
    shift = 0
    while shift < 31 and ((top + 1) << (shift + 1)) + 65535 < (1 << 32):
        shift += 1
    return shift


def residual_stages(ratio):
    """The rescale of a residual into an accumulator scale (Quantizer::emit_integer): one stage
    when the ratios fit choose_requant, else an exact integer pre-multiply min(65535,
    ceil(ratio / 32768)) with shift 0 and then choose_requant(ratio / pre). Both are returned as
    two stages; the first multiplies by 1 in the one-stage case."""
    _, _, fits = choose_requant(ratio)
    pre = torch.where(fits, torch.ones_like(ratio), torch.clamp(torch.ceil(ratio / 32768.0), max=65535.0))
    shift, factor, _ = choose_requant(ratio / pre)
    return [(pre, torch.zeros_like(shift), INT32_RANGE), (factor, shift, INT32_RANGE)]


def dead_channels(bias, acc_scale, residual_scale):
    """Channels whose weights the quantizer sets to 0 with scale 1: |bias| / scale > 2^31 - 1, or a
    residual scale / scale of 2^31 or more (float64 tensors; residual_scale may be None)."""
    dead = (bias / acc_scale).abs() > 2147483647.0
    if residual_scale is not None:
        dead = dead | (residual_scale / acc_scale >= 2147483648.0)
    return dead


def stage_multiplier(factor, shift, dtype):
    """factor * 2^-shift as `dtype` (exact: the factors fit 16 bits, the shifts 0..31)."""
    return factor.to(dtype) * pow2(-shift).to(dtype)


def _stage(x, m):
    """One float32 requantization stage, sign(x) * floor(|x| * m + 1/2) clamped to int32, with
    m = factor * 2^-shift (requantize_exact's float32 form)."""
    mag = torch.floor(x.abs() * m + 0.5)
    return torch.where(x < 0, -mag, mag).clamp(INT32_RANGE[0], INT32_RANGE[1])


def _inside(y, lo, hi):
    """Where y lies strictly inside (lo, hi): the values a clamp to [lo, hi] passes gradients to."""
    return (y > lo) & (y < hi)


def requantize_exact(x, factor, shift, rng):
    """quant::requantize on a float64 tensor of integers: per channel (axis 1),
    q = sign(x) * ((|x| * factor + 2^(shift-1)) >> shift), rounding half away from zero, then
    clamped to `rng`. `factor` is a float64 vector of integers, `shift` a 0-d tensor."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    f = factor.to(device=x.device, dtype=x.dtype).view(shape)
    shift = shift.to(device=x.device, dtype=x.dtype)
    if x.dtype != torch.float64:
        # The float32 form for training: the same formula with the product rounded to f32, which
        # can differ from the exact one only next to a rounding tie (rng lies within int32).
        return _stage(x, stage_multiplier(f, shift, x.dtype)).clamp(rng[0], rng[1])
    # For shift 0, adding 1/2 and taking the floor leaves the integer product as it is.
    mag = torch.floor((x.abs() * f + pow2(shift - 1).to(x.dtype)) / pow2(shift).to(x.dtype))
    q = torch.where(x < 0, -mag, mag)
    return q.clamp(rng[0], rng[1])


class _Requantize(torch.autograd.Function):
    """y = requantize(x) exactly; dy/dx = ratio (the real scale ratio the factor approximates) and
    dy/dratio = x, both zero where y is clamped."""

    @staticmethod
    def forward(ctx, x, ratio, stages, rng):
        y = x
        for factor, shift, stage_rng in stages:
            y = requantize_exact(y, factor, shift, stage_rng)
        y = y.clamp(rng[0], rng[1])
        inside = _inside(y, rng[0], rng[1])
        ctx.save_for_backward(x, ratio, inside)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, ratio, inside = ctx.saved_tensors
        shape = [1, -1] + [1] * (x.dim() - 2)
        g = torch.where(inside, grad, torch.zeros_like(grad))
        grad_x = g * ratio.view(shape).to(g.dtype)
        dims = [0] + list(range(2, x.dim()))
        grad_ratio = (g * x).sum(dim=dims).to(ratio.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_ratio, None, None


def requantize(x, ratio, stages, rng):
    """The requantization of accumulators `x` (integer-valued, N x C x ...) by `stages`, a list of
    (factor, shift, range) applied in order (one stage, or a shift-0 integer pre-multiply and a
    second stage), clamped to `rng`. `ratio` (C) carries the gradient to the scales."""
    return _Requantize.apply(x, ratio, stages, rng)


class _RoundHalfEven(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x):
    """Round half to even (std::nearbyint), identity gradient."""
    return _RoundHalfEven.apply(x)


def quantize_float(x, scale, rng):
    """nibble:QuantizeFloat: q = clamp(round_half_even(f32(x / scale))). `x` is f32; `scale` a
    0-d tensor whose value is an f32 number. The gradient is LSQ's: through x / scale inside the
    range, and nothing to x outside it (the scale then gets the clamp value)."""
    q = round_ste(x / scale.to(x.dtype))
    return _clamp_ste(q, rng)


class _Clamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, torch.zeros_like(grad)), None, None


def _clamp_ste(x, rng):
    return _Clamp.apply(x, float(rng[0]), float(rng[1]))


class _AverageRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, n):
        ctx.n = n
        return torch.floor(div(s + (n // 2), n))

    @staticmethod
    def backward(ctx, grad):
        return grad / ctx.n, None


def average_pool(q, kernel, stride):
    """nibble's integer average pool of non-negative integers: (sum + n / 2) / n, n = k * k."""
    s = torch.nn.functional.avg_pool2d(q, kernel, stride) * (kernel * kernel)
    s = round_ste(s)  # the sum of integers, exact; rounding removes any error of the pooling
    return _AverageRound.apply(s, kernel * kernel)


class _Exact(torch.autograd.Function):
    """Forward value `exact`, gradient of `surrogate`."""

    @staticmethod
    def forward(ctx, surrogate, exact):
        return exact.to(surrogate.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def with_value(surrogate, exact):
    """`exact` in the forward pass, the gradient of `surrogate` in the backward pass."""
    return _Exact.apply(surrogate, exact.detach())


def weight_scale(w, bits):
    """Per-output-channel symmetric weight scales: f32(max |w[k]| / levels), 1 for an all-zero
    channel. `w` is float64 (K x ...)."""
    lv = levels(bits, True)
    top = w.detach().abs().reshape(w.shape[0], -1).max(dim=1).values.to(torch.float64)
    s = torch.where(top > 0, div(top, lv), torch.ones_like(top))
    return s.to(torch.float32).to(torch.float64)


def quantize_weight_exact(w64, scale64, bits):
    """round_half_even(w / scale) clamped to [-levels, levels], in float64."""
    lv = levels(bits, True)
    shape = [-1] + [1] * (w64.dim() - 1)
    return torch.round(w64 / scale64.view(shape)).clamp(-lv, lv)


def activation_scale(threshold, bits, is_signed):
    """The scale of an activation whose range is [-t, t] or [0, t]: f32(t / levels), computed in
    float64 from the f32 threshold as the quantizer does. Returns a float64 0-d tensor holding
    an f32 value, with the gradient of t / levels."""
    lv = levels(bits, is_signed)
    surrogate = div(threshold.to(torch.float64), lv)
    exact = div(threshold.detach().to(torch.float64), lv).to(torch.float32).to(torch.float64)
    return with_value(surrogate, exact)


def lsq_grad_scale(x, g):
    """LSQ's gradient scaling: forward x, backward g * grad."""
    return (x - x * g).detach() + x * g


INT32_RANGE = (-2147483647, 2147483647)


# --- the fused epilogue of a training convolution ---------------------------------------------
#
# In training (float32) every integer convolution ends in the same chain: round the convolution,
# add the integer bias, add the requantized residual, ReLU, requantize to the output width. As
# separate PyTorch operations that is about twenty elementwise operations forward and backward,
# each with its own intermediate tensor. conv_epilogue() computes the same values with one
# autograd node whose forward and backward are plain functions of whole tensors (ResNet-50 at
# 224 x 224, batch 64: peak memory 3.9 GiB against 6.8 GiB). With KERNELS.compile set
# (finetune --step-mode compiled or graphed: CUDA, PyTorch 2) they are compiled by torch.compile
# into a few fused kernels. Values and gradients are those of the separate operations (the
# float32 formulas above; a compiled kernel may fuse a product and a sum, which can move a result
# that lies next to a rounding tie).


def _epilogue_forward(conv, bias, src, m1, m2, m, lo, hi, relu):
    """(q, acc, inside of the residual) of conv_epilogue."""
    acc = torch.round(conv) + bias
    res_inside = None
    if src is not None:
        r = _stage(_stage(src, m1), m2)
        res_inside = _inside(r, INT32_RANGE[0], INT32_RANGE[1])
        acc = acc + r
    if relu:
        acc = torch.relu(acc)
    return _stage(acc, m).clamp(lo, hi), acc, res_inside


def _epilogue_backward(g, q, acc, src, res_inside, ratio, res_ratio, lo, hi, dims):
    """(d conv, d bias, d ratio, d src, d res_ratio) of conv_epilogue; acc and src are None when
    their ratio needs no gradient, res_inside is None without a residual."""
    g = torch.where(_inside(q, lo, hi), g, torch.zeros_like(g))
    d_ratio = (g * acc).sum(dim=dims) if acc is not None else None
    d_acc = g * ratio
    d_bias = d_acc.sum(dim=dims)
    d_src = d_res_ratio = None
    if res_inside is not None:
        g_res = torch.where(res_inside, d_acc, torch.zeros_like(d_acc))
        d_src = g_res * res_ratio
        if src is not None:
            d_res_ratio = (g_res * src).sum(dim=dims)
    return d_acc, d_bias, d_ratio, d_src, d_res_ratio


class _Kernels:
    """The epilogue's forward and backward functions: compiled on CUDA with PyTorch 2 when
    `compile` is set (train.step_function sets it), unless compiling failed once (reported, then
    run eagerly)."""

    compile = False

    def __init__(self):
        self.compiled = None
        self.failed = False

    def get(self, device):
        if device.type != "cuda" or not self.compile or self.failed or not hasattr(torch, "compile"):
            return _epilogue_forward, _epilogue_backward
        if self.compiled is None:
            import torch._dynamo as dynamo
            # One graph per variant (residual or not, ReLU or not, output range, 2-d or 4-d):
            # more than the default of 8 per function in a large model.
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo.config, name):
                    setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))
            self.compiled = (torch.compile(_epilogue_forward, dynamic=True),
                             torch.compile(_epilogue_backward, dynamic=True))
        return self.compiled

    def run(self, which, device, *args):
        fns = self.get(device)
        if fns[which] is (_epilogue_forward, _epilogue_backward)[which]:
            return fns[which](*args)
        try:
            return fns[which](*args)
        except Exception as e:  # noqa: BLE001 -- the compiler's many error types; fall back to eager
            import sys
            self.failed = True
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"nibble_qat: torch.compile failed ({type(e).__name__}: {first[:200]}); running the "
                  f"quantization steps eagerly", file=sys.stderr)
            return (_epilogue_forward, _epilogue_backward)[which](*args)


KERNELS = _Kernels()


class _Epilogue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, conv, bias, ratio, src, res_ratio, m, m1, m2, lo, hi, relu):
        shape = [1, -1] + [1] * (conv.dim() - 2)
        q, acc, res_inside = KERNELS.run(0, conv.device, conv, bias.view(shape), src, m1, m2, m, lo, hi, relu)
        need = ctx.needs_input_grad
        ctx.save_for_backward(q, acc if need[2] else None, res_inside, src if src is not None and need[4] else None,
                              ratio, res_ratio)
        ctx.rng = (lo, hi)
        return q

    @staticmethod
    def backward(ctx, grad):
        q, acc, res_inside, src, ratio, res_ratio = ctx.saved_tensors
        dims = [0] + list(range(2, q.dim()))
        shape = [1, -1] + [1] * (q.dim() - 2)
        r = ratio.to(grad.dtype).view(shape)
        rr = res_ratio.to(grad.dtype).view(shape) if res_ratio is not None else None
        d_conv, d_bias, d_ratio, d_src, d_res_ratio = KERNELS.run(
            1, grad.device, grad.contiguous(), q, acc, src, res_inside, r, rr, ctx.rng[0], ctx.rng[1], dims)
        if d_ratio is not None:
            d_ratio = d_ratio.to(ratio.dtype)
        if d_res_ratio is not None:
            d_res_ratio = d_res_ratio.to(res_ratio.dtype)
        return (d_conv, d_bias, d_ratio, d_src, d_res_ratio) + (None,) * 6


def conv_epilogue(conv, bias, ratio, factor, shift, rng, relu, residual=None):
    """requantize(relu(round(conv) + bias + residual)) on float32 tensors, one autograd node.

    conv: N x C x ... convolution of integers; bias: C integers (float32); ratio: C float64
    (accumulator scale / output scale, carrying the gradient to the scales); factor, shift: its
    requantization (choose_requant); rng: the output range. residual: None or (src, res_ratio,
    stages) with src the residual's integers, res_ratio its scale over the accumulator scale and
    stages from residual_stages. Gradients are those of the separate steps (see requantize)."""
    shape = [1, -1] + [1] * (conv.dim() - 2)
    m = stage_multiplier(factor, shift, conv.dtype).view(shape)
    src = res_ratio = m1 = m2 = None
    if residual is not None:
        src, res_ratio, stages = residual
        (f1, s1, _), (f2, s2, _) = stages
        m1 = stage_multiplier(f1, s1, conv.dtype).view(shape)
        m2 = stage_multiplier(f2, s2, conv.dtype).view(shape)
    return _Epilogue.apply(conv, bias, ratio, src, res_ratio, m, m1, m2,
                           float(rng[0]), float(rng[1]), bool(relu))
