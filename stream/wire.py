"""Versioned multipart wire format: a JSON header, then one raw buffer per numpy field. No pickle."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from stream.messages import MESSAGE_TYPES, Frame

PROTOCOL = 1
# Only plain numeric dtypes cross the wire; object arrays would need pickle.
_DTYPES = {name: np.dtype(name) for name in ("uint8", "int32", "int64", "float16", "float32", "float64", "bool")}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}  # dtype.name is slow: a Python property
# The decoder is total: whatever bytes come, it returns a valid message or raises WireError. These
# bounds keep a hostile header from costing more than a legitimate one.
HEADER_MAX = 256 * 1024  # bytes of JSON header (a frame of 1000 boxes needs ~30 KiB)
DEPTH_MAX = 32           # nesting of the header; ours nest 3 deep, event records a few more
RANK_MAX = 4             # the deepest array is thumbs (N, T, T, 3)
ELEMENTS_MAX = 1 << 28   # elements per array; an 8K BGR frame has 10^8
_HEADER_KEYS = {"v", "type", "fields", "arrays"}
_SPEC_KEYS = {"name", "dtype", "shape"}
# A box message holds its Frame in a field `frame`; on the wire the frame's fields sit beside the boxes'
# (source, index, ts, image, xyxy, ...), the layout protocol 1 had when box messages subclassed Frame.
_FRAME_FIELDS = tuple(f.name for f in dataclasses.fields(Frame))
_HOLDS_FRAME = frozenset(name for name, cls in MESSAGE_TYPES.items()
                         if any(f.name == "frame" for f in dataclasses.fields(cls)))


def _flat_fields(cls) -> list:
    """cls's fields in wire order, the frame's in place of `frame`."""
    out = []
    for f in dataclasses.fields(cls):
        out.extend(dataclasses.fields(Frame) if f.name == "frame" else [f])
    return out


# Per message type: which fields travel as arrays; the rest travel in the header's "fields".
_ARRAYS = {name: frozenset(f.name for f in _flat_fields(cls) if "ndarray" in str(f.type))
           for name, cls in MESSAGE_TYPES.items()}
_SCALARS = {name: frozenset(f.name for f in _flat_fields(cls)) - _ARRAYS[name]
            for name, cls in MESSAGE_TYPES.items()}


class WireError(ValueError):
    """A message that cannot be decoded: malformed, over a bound, wrong protocol version, unknown type or
    contents its message class refuses."""


def encode(msg) -> list:
    """-> [header bytes, buffer, ...]; buffers are the arrays themselves (zero-copy with copy=False)."""
    fields, specs, buffers = {}, [], []
    for f in dataclasses.fields(msg):
        if f.name == "frame":
            items = [(name, getattr(msg.frame, name)) for name in _FRAME_FIELDS]
        else:
            items = [(f.name, getattr(msg, f.name))]
        for name, value in items:
            if isinstance(value, np.ndarray):
                dtype = _NAMES.get(value.dtype)
                if dtype is None:
                    raise WireError(f"{type(msg).__name__}.{name}: dtype {value.dtype} cannot be sent")
                value = np.ascontiguousarray(value)
                specs.append({"name": name, "dtype": dtype, "shape": list(value.shape)})
                buffers.append(value)
            else:
                fields[name] = list(value) if isinstance(value, tuple) else value
    header = {"v": PROTOCOL, "type": type(msg).__name__, "fields": fields, "arrays": specs}
    return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode()] + buffers


def decode(frames: list):
    """Inverse of encode; frames may be bytes or zmq.Frame. Raises WireError on anything off, and
    nothing else: sizes, nesting, names, types, shapes and (via the message classes) contents are checked."""
    try:
        frames = list(frames)
    except TypeError:
        raise WireError("a message is a list of frames") from None
    if not frames:
        raise WireError("empty message")
    header = _header(frames[0])
    kind = header["type"]
    fields, specs = header["fields"], header["arrays"]
    for key, value in fields.items():
        if key not in _SCALARS[kind] and not (key in _ARRAYS[kind] and value is None):
            raise WireError(f"{kind} has no field {_short(key)}")
    if len(specs) != len(frames) - 1:
        raise WireError(f"header lists {len(specs)} arrays but {len(frames) - 1} buffers came")
    kwargs = dict(fields)
    for spec, frame in zip(specs, frames[1:]):
        name, array = _array(spec, frame, _ARRAYS[kind])
        if name in kwargs:
            raise WireError(f"{kind}.{name} comes twice")
        kwargs[name] = array
    cls = MESSAGE_TYPES[kind]
    try:
        if kind in _HOLDS_FRAME:
            kwargs["frame"] = Frame(**{name: kwargs.pop(name) for name in _FRAME_FIELDS if name in kwargs})
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise WireError(f"bad {kind}: {exc}") from None


def _header(frame) -> dict:
    """The header frame parsed and its outline checked: a JSON object {v, type, fields, arrays}."""
    text = frame if type(frame) is bytes else _bytes(frame)
    if len(text) > HEADER_MAX:
        raise WireError(f"header of {len(text)} bytes, at most {HEADER_MAX}")
    text = bytes(text)
    try:
        header = _JSON.decode(text.decode("utf-8"))
    except RecursionError:
        raise WireError("header nests too deep") from None
    except ValueError as exc:  # includes UnicodeDecodeError and JSONDecodeError
        raise WireError(f"header is not JSON: {_short(exc)}") from None
    # A header with few brackets cannot nest deeply: only count levels when it has many.
    if text.count(b"[") + text.count(b"{") > DEPTH_MAX and _depth(header) > DEPTH_MAX:
        raise WireError(f"header nests deeper than {DEPTH_MAX}")
    if not isinstance(header, dict) or header.keys() != _HEADER_KEYS:
        raise WireError(f"header must be an object with exactly the keys {sorted(_HEADER_KEYS)}")
    if type(header["v"]) is not int or header["v"] != PROTOCOL:
        raise WireError(f"protocol version {_short(header['v'])}, expected {PROTOCOL}")
    if not isinstance(header["type"], str) or header["type"] not in MESSAGE_TYPES:
        raise WireError(f"unknown message type {_short(header['type'])}")
    if not isinstance(header["fields"], dict) or not isinstance(header["arrays"], list):
        raise WireError("header needs 'fields' (object) and 'arrays' (list)")
    return header


def _array(spec, frame, names: frozenset) -> tuple[str, np.ndarray]:
    """(field name, array) of one buffer described by spec {name, dtype, shape}."""
    if type(spec) is not dict or len(spec) != len(_SPEC_KEYS):
        raise WireError(f"an array spec is an object with exactly the keys {sorted(_SPEC_KEYS)}")
    name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")  # a missing key fails below
    if type(name) is not str or name not in names:
        raise WireError(f"no array field {_short(name)} in this message type")
    dtype = _DTYPES.get(dtype) if type(dtype) is str else None
    if dtype is None:
        raise WireError(f"array {name!r}: dtype {_short(spec.get('dtype'))} is not one of {sorted(_DTYPES)}")
    count = _count(shape)
    if count is None:
        raise WireError(f"array {name!r}: shape {_short(shape)} is not a list of at most {RANK_MAX} "
                        f"sizes with at most {ELEMENTS_MAX} elements")
    buf = frame if type(frame) is bytes else _bytes(frame)
    if len(buf) != count * dtype.itemsize:
        raise WireError(f"array {name!r}: {len(buf)} bytes, expected {count * dtype.itemsize} for {dtype}{shape}")
    if dtype.kind == "b" and count and np.frombuffer(buf, np.uint8).max() > 1:
        raise WireError(f"array {name!r}: bool bytes must be 0 or 1")  # numpy would keep 2 as a "true" 2
    return name, np.ndarray(shape, dtype, buf)  # read-only when buf is: no copy


def _count(shape) -> int | None:
    """Elements of a shape given as a JSON list of sizes; None if it is not one, or too big."""
    if type(shape) is not list or len(shape) > RANK_MAX:
        return None
    count = 1
    for size in shape:
        if type(size) is not int or not 0 <= size <= ELEMENTS_MAX:  # bool is an int; 1.0 is not
            return None
        count *= size
    return count if count <= ELEMENTS_MAX else None


def _bytes(frame) -> memoryview:
    """A frame's bytes as a flat memoryview, without a copy."""
    try:
        view = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
        return view if view.ndim == 1 and view.format == "B" else view.cast("B")
    except (TypeError, ValueError):
        raise WireError(f"a frame must be bytes, not {type(frame).__name__}") from None


def _depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (no recursion: the value may nest ~1000 deep)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        value, depth = todo.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in children)
    return deepest


def _no_constant(name: str):  # NaN, Infinity: JSON has neither, Python's json reads both
    raise ValueError(f"{name} is not a number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a double")
    return value


_JSON = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def _short(value, limit: int = 60) -> str:
    """repr cut short: a hostile value may be 256 KiB long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
