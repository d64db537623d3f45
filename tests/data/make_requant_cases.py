#!/usr/bin/env python3
"""Writes requant_cases.txt: the requantization definition as test vectors, computed with exact
rational arithmetic (fractions), independently of both implementations that are checked against
it: the C++ engine (tests/cpp/test_requant_cases.cpp) and nibble_qat (tests/python/test_qat.py).

    python3 tests/data/make_requant_cases.py > tests/data/requant_cases.txt
"""
import random
from fractions import Fraction


def requantize(x, factor, shift, bits, is_signed):
    # round(x * factor / 2^shift), halves away from zero, then clamp to the b-bit range.
    v = Fraction(abs(x) * factor, 2 ** shift)
    mag = int(v + Fraction(1, 2))  # floor(v + 1/2) for v >= 0
    q = -mag if x < 0 else mag
    top = 2 ** bits - 1
    lo = -top if is_signed else 0
    return max(lo, min(top, q))


def choose(ratios, limit=31):
    # The largest shift in 0..31 with every round_half_even(ratio * 2^shift) <= 65535, but at most
    # `limit` unless a positive ratio would round to 0 there.
    top = max(ratios)
    if not top < Fraction(131071, 2):
        return None
    def rne(v):
        f = int(v)  # v >= 0
        rem = v - f
        return f + 1 if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and f % 2) else f
    shift = 0
    while shift < 31 and rne(top * 2 ** (shift + 1)) <= 65535:
        shift += 1
    if shift > limit and all(rne(r * 2 ** limit) > 0 for r in ratios if r > 0):
        shift = limit
    return shift, [rne(r * 2 ** shift) for r in ratios]


def shift_limit(bits, is_signed):
    # The largest shift whose 32-bit saturation thresholds exist for every 16-bit factor f: the
    # threshold t = ceil((need - round) / f), need = (top + 1) 2^shift, round = 2^(shift - 1), must
    # keep t f + round below 2^32; the worst f (65535 with t f = need - round + f - 1) gives
    # need + 65534 < 2^32.
    top = 2 ** bits - 1
    shift = 0
    while shift < 31 and (top + 1) * 2 ** (shift + 1) + 65534 < 2 ** 32:
        shift += 1
    return shift


def random_ratios(exponents, smallest):
    # 1 to 4 ratios of one random magnitude 10^e (e uniform in `exponents`), each that magnitude
    # times a uniform fraction in [smallest, 1).
    n = rng.randrange(1, 5)
    mag = 10.0 ** rng.uniform(*exponents)
    return [rng.uniform(smallest, 1.0) * mag for _ in range(n)]


def choose_line(kind, ratios, r):
    text = ",".join(repr(v) for v in ratios)
    return f"{kind} {text} none" if r is None else f"{kind} {text} {r[0]} {','.join(map(str, r[1]))}"


rng = random.Random(6)
print("# Requantization test vectors (see make_requant_cases.py).")
print("# requant x factor shift bits signed expected")
cases = []
for _ in range(400):
    shift = rng.choice([0, 1, 2, 5, 8, 13, 16, 20, 24, 31])
    factor = rng.randrange(0, 65536)
    bits = rng.choice([3, 4, 7, 8, 15, 31])
    x = rng.randrange(-2 ** 31 + 1, 2 ** 31) >> rng.randrange(0, 31)
    cases.append((x, factor, shift, bits, rng.random() < 0.5))
# Exact halves: x * factor = (2k + 1) * 2^(shift - 1) rounds away from zero.
for shift in (1, 4, 9, 16):
    for k in (0, 1, 2, 7, 100):
        x = (2 * k + 1) << (shift - 1)
        cases += [(x, 1, shift, 31, True), (-x, 1, shift, 31, True)]
for x, factor, shift, bits, sg in cases:
    print(f"requant {x} {factor} {shift} {bits} {int(sg)} {requantize(x, factor, shift, bits, sg)}")

print("# choose ratio,ratio,... shift factor,factor,... (ratios are exact decimal doubles; none: does not fit)")
for _ in range(60):
    ratios = random_ratios((-9, 5), 0.01)
    if rng.random() < 0.1:
        ratios.append(rng.choice([65535.0, 65535.4999, 65535.5, 70000.0]))
    print(choose_line("choose", ratios, choose([Fraction(v) for v in ratios])))
print("# limit bits signed shift: the largest shift with 32-bit saturation thresholds")
for bits in (3, 4, 7, 8, 15, 31):
    for sg in (0, 1):
        print(f"limit {bits} {sg} {shift_limit(bits, sg)}")
print("# choose_at_most limit ratio,ratio,... shift factor,factor,...")
for _ in range(40):
    ratios = random_ratios((-12, 0), 0.001)
    if rng.random() < 0.2:
        ratios.append(0.0)
    limit = rng.choice([23, 24, 27])
    print(choose_line(f"choose_at_most {limit}", ratios, choose([Fraction(v) for v in ratios], limit)))
