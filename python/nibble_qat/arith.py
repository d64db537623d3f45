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


def choose_requant(ratio):
    """quant::choose_requant on a float64 tensor of ratios, on its device without a host sync:
    the largest shift in 0..31 such that every factor round_half_even(ratio * 2^shift) fits in
    u16. Returns (shift, factor, fits): a 0-d float64 tensor, a float64 tensor of integers, and
    a 0-d bool tensor that is false when the largest ratio does not fit even with shift 0."""
    top = ratio.max()
    steps = torch.arange(1, 32, dtype=torch.float64, device=ratio.device)
    shift = (torch.round(top * pow2(steps)) <= 65535.0).sum().to(torch.float64)
    return shift, torch.round(ratio * pow2(shift)), top < 65535.5


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


def requantize_exact(x, factor, shift, rng):
    """quant::requantize on a float64 tensor of integers: per channel (axis 1),
    q = sign(x) * ((|x| * factor + 2^(shift-1)) >> shift), rounding half away from zero, then
    clamped to `rng`. `factor` is a float64 vector of integers, `shift` a 0-d tensor."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    f = factor.to(device=x.device, dtype=x.dtype).view(shape)
    shift = shift.to(device=x.device, dtype=x.dtype)
    if x.dtype == torch.float64:
        # For shift 0, adding 1/2 and taking the floor leaves the integer product as it is.
        mag = torch.floor((x.abs() * f + pow2(shift - 1).to(x.dtype)) / pow2(shift).to(x.dtype))
    else:
        # The float32 form for training: the same formula with the product rounded to f32, which
        # can differ from the exact one only next to a rounding tie.
        mag = torch.floor(x.abs() * (f * pow2(-shift).to(x.dtype)) + 0.5)
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
        inside = (y > rng[0]) & (y < rng[1])
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
