"""nibble's calibration table (`nibble calibrate -o X.calib`): one tensor per line,
`name method lo hi`, `#` comments. Values are read as f32 numbers, as the C++ reader does."""

import math
import os
import re

from .arith import f32

_METHOD = re.compile(r"^(max|entropy|mse|percentile:([0-9.eE+-]+))$")


class CalibError(ValueError):
    """A malformed table; the message starts with FILE:LINE."""


class Entry:
    def __init__(self, tensor, method, lo, hi):
        self.tensor, self.method, self.lo, self.hi = tensor, method, lo, hi


class CalibTable:
    def __init__(self, path="", comments=None, entries=None):
        self.path = path
        self.comments = comments or []
        self.entries = entries or []

    def find(self, tensor):
        for e in self.entries:
            if e.tensor == tensor:
                return e
        return None

    def tensors(self):
        return [e.tensor for e in self.entries]


def _check_method(method, where):
    m = _METHOD.match(method)
    if not m:
        raise CalibError(f"{where}: unknown calibration method '{method}' (expected max, percentile:P, entropy or mse)")
    if m.group(2) is not None:
        try:
            p = float(m.group(2))
        except ValueError:
            p = -1.0
        if not 0 < p <= 100:
            raise CalibError(f"{where}: the percentile of '{method}' must be in (0, 100]")


def read(path):
    """Reads a table; raises CalibError (FILE:LINE: problem) for a malformed one and OSError's
    message for an unreadable file."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CalibError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise CalibError(f"{path}: not a text file") from None
    table = CalibTable(path)
    seen = {}
    for no, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            c = stripped[1:]
            table.comments.append(c[1:] if c.startswith(" ") else c)
            continue
        where = f"{path}:{no}"
        fields = stripped.split()
        if len(fields) != 4:
            raise CalibError(f"{where}: expected 'tensor method lo hi', got {len(fields)} field"
                             f"{'' if len(fields) == 1 else 's'}")
        name, method = fields[0], fields[1]
        _check_method(method, where)
        vals = []
        for tok, what in ((fields[2], "lo"), (fields[3], "hi")):
            try:
                v = float(tok)
            except ValueError:
                raise CalibError(f"{where}: {what} '{tok}' of tensor '{name}' is not a number") from None
            if not math.isfinite(v) or abs(v) >= 3.4028235677973366e38:
                raise CalibError(f"{where}: {what} '{tok}' of tensor '{name}' is not a finite f32 number")
            vals.append(f32(v))
        if vals[0] > vals[1]:
            raise CalibError(f"{where}: inverted range for tensor '{name}': lo {vals[0]} > hi {vals[1]}")
        if name in seen:
            raise CalibError(f"{where}: duplicate tensor '{name}' (first given on line {seen[name]})")
        seen[name] = no
        table.entries.append(Entry(name, method, vals[0], vals[1]))
    return table


def _num(v):
    """%.9g, which gives back the same f32 value when read."""
    return f"{v:.9g}"


def format_table(table):
    out = []
    for c in table.comments:
        out.append("#" if not c else f"# {c}")
    for e in table.entries:
        out.append(f"{e.tensor} {e.method} {_num(e.lo)} {_num(e.hi)}")
    return "\n".join(out) + "\n"


def write(table, path):
    """Writes atomically (a temporary file next to `path`, then a rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(format_table(table))
    os.replace(tmp, path)


def with_ranges(table, ranges, comment):
    """A copy of `table` whose entries named in `ranges` ({tensor: (lo, hi)}) take those ranges."""
    out = CalibTable(table.path, list(table.comments) + [comment], [])
    for e in table.entries:
        lo, hi = ranges.get(e.tensor, (e.lo, e.hi))
        out.entries.append(Entry(e.tensor, e.method, f32(lo), f32(hi)))
    return out
