"""Reading and rewriting ONNX files without the onnx package.

An ONNX file is a protobuf ModelProto. This module decodes the parts that fine-tuning needs
(the graph's nodes, initializers, inputs and outputs) and writes the file back with new
initializer values, keeping every other field byte for byte. The protobuf wire format is small
enough to handle here, which keeps the package usable wherever PyTorch is (the onnx package is
not always installed next to it).
"""

import struct

import numpy as np


class OnnxError(ValueError):
    """A file that is not a readable ONNX model; the message names the problem."""


# Protobuf wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# TensorProto.DataType values and their numpy types.
_DTYPES = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}
_FLOAT = 1


def _varint(buf, pos):
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise OnnxError("varint longer than 10 bytes")


def _fields(buf):
    """The fields of one message: a list of (number, wire type, value), in file order.

    Length-delimited values are memoryview slices; varints are ints; fixed ones are raw bytes.
    """
    out = []
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _I64:
            value, pos = bytes(buf[pos:pos + 8]), pos + 8
        elif wire == _I32:
            value, pos = bytes(buf[pos:pos + 4]), pos + 4
        elif wire == _LEN:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise OnnxError("a field runs past the end of its message")
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise OnnxError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise OnnxError("truncated field")
        out.append((number, wire, value))
    return out


def _signed64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(field):
    number, wire, value = field
    if wire == _VARINT:
        return [_signed64(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed64(v))
    return out


def _packed_floats(field):
    number, wire, value = field
    if wire == _I32:
        return list(struct.unpack("<f", value))
    if len(value) % 4:
        raise OnnxError("packed floats of a length not a multiple of 4")
    return list(struct.unpack(f"<{len(value) // 4}f", bytes(value)))


def _text(value):
    return bytes(value).decode("utf-8")


def _tensor(buf):
    """A TensorProto as (name, numpy array)."""
    dims, dtype, name, raw = [], 0, "", None
    lists = {4: [], 5: [], 7: [], 10: [], 11: []}
    for f in _fields(buf):
        number, wire, value = f
        if number == 1:
            dims += _packed_varints(f)
        elif number == 2:
            dtype = value
        elif number == 8:
            name = _text(value)
        elif number == 9:
            raw = bytes(value)
        elif number == 4:
            lists[4] += _packed_floats(f)
        elif number in (5, 7, 11):
            lists[number] += _packed_varints(f)
        elif number == 10:
            lists[10] += list(struct.unpack(f"<{len(value) // 8}d", bytes(value))) if wire == _LEN else [
                struct.unpack("<d", value)[0]]
        elif number == 14 and value == 1:
            raise OnnxError(f"tensor '{name}' keeps its data in an external file, which is not supported")
    if dtype not in _DTYPES:
        raise OnnxError(f"tensor '{name}' has unsupported data type {dtype}")
    np_type = _DTYPES[dtype]
    count = int(np.prod(dims)) if dims else 1
    if raw is not None:
        if len(raw) != count * np.dtype(np_type).itemsize:
            raise OnnxError(f"tensor '{name}' holds {len(raw)} bytes, its shape {dims} needs "
                            f"{count * np.dtype(np_type).itemsize}")
        arr = np.frombuffer(raw, dtype=np.dtype(np_type).newbyteorder("<")).astype(np_type)
    else:
        source = {1: 4, 11: 10, 7: 7, 13: 11, 12: 11}.get(dtype, 5)
        values = lists[source]
        if len(values) != count:
            raise OnnxError(f"tensor '{name}' holds {len(values)} values, its shape {dims} needs {count}")
        if dtype == 10:
            arr = np.array(values, dtype=np.uint16).view(np.float16)
        else:
            arr = np.array(values).astype(np_type)
    return name, arr.reshape(dims).copy()


def _attribute(buf):
    name, kind, single = "", 0, {}
    floats, ints, strings = [], [], []
    for f in _fields(buf):
        number, wire, value = f
        if number == 1:
            name = _text(value)
        elif number == 20:
            kind = value
        elif number == 2:
            single["f"] = struct.unpack("<f", value)[0]
        elif number == 3:
            single["i"] = _signed64(value)
        elif number == 4:
            single["s"] = bytes(value)
        elif number == 5:
            single["t"] = _tensor(value)[1]
        elif number == 7:
            floats += _packed_floats(f)
        elif number == 8:
            ints += _packed_varints(f)
        elif number == 9:
            strings.append(bytes(value))
    by_kind = {1: single.get("f"), 2: single.get("i"), 3: single.get("s"), 4: single.get("t"),
               6: floats, 7: ints, 8: strings}
    if kind in by_kind:
        return name, by_kind[kind]
    # Files written without the type field: take whatever is present.
    for key in ("f", "i", "s", "t"):
        if key in single:
            return name, single[key]
    return name, ints or floats or strings


class Node:
    """One NodeProto: op_type, name, inputs, outputs and attributes (a dict)."""

    def __init__(self, op_type, name, inputs, outputs, attrs, domain):
        self.op_type, self.name, self.inputs, self.outputs, self.attrs, self.domain = (
            op_type, name, inputs, outputs, attrs, domain)

    def label(self):
        return f"node '{self.name or self.outputs[0]}' ({self.op_type})"


def _node(buf):
    op_type, name, domain, inputs, outputs, attrs = "", "", "", [], [], {}
    for number, wire, value in _fields(buf):
        if number == 1:
            inputs.append(_text(value))
        elif number == 2:
            outputs.append(_text(value))
        elif number == 3:
            name = _text(value)
        elif number == 4:
            op_type = _text(value)
        elif number == 7:
            domain = _text(value)
        elif number == 5:
            k, v = _attribute(value)
            attrs[k] = v
    return Node(op_type, name, inputs, outputs, attrs, domain)


def _value_info(buf):
    """A ValueInfoProto as (name, elem_type, shape); dims are ints, or None when symbolic."""
    name, elem, shape = "", 0, None
    for number, wire, value in _fields(buf):
        if number == 1:
            name = _text(value)
        elif number == 2:
            for tn, _, tv in _fields(value):
                if tn != 1:
                    continue
                for kn, _, kv in _fields(tv):
                    if kn == 1:
                        elem = kv
                    elif kn == 2:
                        shape = []
                        for dn, _, dv in _fields(kv):
                            if dn != 1:
                                continue
                            dim = None
                            for en, _, ev in _fields(dv):
                                if en == 1:
                                    dim = _signed64(ev)
                            shape.append(dim)
    return name, elem, shape


class Model:
    """The graph of an ONNX file, and what is needed to write it back."""

    def __init__(self, path, data):
        self.path = path
        self._data = bytes(data)
        self.nodes, self.initializers, self.inputs, self.outputs = [], {}, [], []
        self.opset = None
        graph = None
        try:
            model_fields = _fields(memoryview(self._data))
            for number, wire, value in model_fields:
                if number == 7 and wire == _LEN:
                    graph = value
                elif number == 8 and wire == _LEN:
                    domain, version = "", None
                    for n, _, v in _fields(value):
                        if n == 1:
                            domain = _text(v)
                        elif n == 2:
                            version = v
                    if domain in ("", "ai.onnx"):
                        self.opset = version
            if graph is None:
                raise OnnxError("no graph in the file (is it an ONNX model?)")
            declared_inputs = []
            for number, wire, value in _fields(graph):
                if number == 1:
                    self.nodes.append(_node(value))
                elif number == 5:
                    name, arr = _tensor(value)
                    self.initializers[name] = arr
                elif number == 11:
                    declared_inputs.append(_value_info(value))
                elif number == 12:
                    self.outputs.append(_value_info(value)[0])
        except (OnnxError, UnicodeDecodeError, struct.error) as e:
            raise OnnxError(f"{path}: not a valid ONNX file ({e})") from None
        # Graph inputs that are also initializers are constants, not model inputs.
        self.inputs = [v for v in declared_inputs if v[0] not in self.initializers]
        if not self.nodes:
            raise OnnxError(f"{path}: the graph has no nodes")

    def save(self, path, initializers):
        """Writes the model to `path` with the initializers named in `initializers` (name -> f32
        numpy array of the same shape) replaced. Everything else is kept as read."""
        left = set(initializers)
        graph_out = bytearray()
        model_out = bytearray()
        for number, wire, value in _fields(memoryview(self._data)):
            if number == 7 and wire == _LEN:
                for gn, gw, gv in _fields(value):
                    if gn == 5:
                        name, old = _tensor(gv)
                        if name in initializers:
                            new = np.ascontiguousarray(initializers[name], dtype=np.float32)
                            if new.shape != old.shape:
                                raise ValueError(f"initializer '{name}': shape {new.shape} differs from {old.shape}")
                            _put_len(graph_out, 5, _encode_f32_tensor(name, new))
                            left.discard(name)
                            continue
                    _put_field(graph_out, gn, gw, gv)
                _put_len(model_out, 7, graph_out)
            else:
                _put_field(model_out, number, wire, value)
        if left:
            raise ValueError(f"no initializers named {sorted(left)} in {self.path}")
        return bytes(model_out)


def _put_varint(out, v):
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _put_field(out, number, wire, value):
    _put_varint(out, (number << 3) | wire)
    if wire == _VARINT:
        _put_varint(out, value)
    elif wire == _LEN:
        _put_varint(out, len(value))
        out += bytes(value)
    else:
        out += value


def _put_len(out, number, payload):
    _put_field(out, number, _LEN, payload)


def _encode_f32_tensor(name, arr):
    out = bytearray()
    dims = bytearray()
    for d in arr.shape:
        _put_varint(dims, int(d))
    if arr.shape:
        _put_len(out, 1, dims)
    _put_field(out, 2, _VARINT, _FLOAT)
    _put_len(out, 8, name.encode("utf-8"))
    _put_len(out, 9, arr.astype("<f4").tobytes())
    return out


def load(path):
    """Reads an ONNX file; raises OnnxError naming the file for a missing or corrupt one."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise OnnxError(f"{path}: cannot read ({e.strerror})") from None
    return Model(path, data)


def from_bytes(data, name="<module>"):
    return Model(name, data)
