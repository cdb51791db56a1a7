"""Versioned multipart wire format: a JSON header, then one raw buffer per numpy field. No pickle."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from stream.messages import MESSAGE_TYPES

PROTOCOL = 1
# Only plain numeric dtypes cross the wire; object arrays would need pickle.
_DTYPES = {"uint8", "int32", "int64", "float16", "float32", "float64", "bool"}


class WireError(ValueError):
    """A message that cannot be decoded: malformed, wrong protocol version or unknown type."""


def encode(msg) -> list:
    """-> [header bytes, buffer, ...]; buffers are the arrays themselves (zero-copy with copy=False)."""
    fields, specs, buffers = {}, [], []
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, np.ndarray):
            if value.dtype.name not in _DTYPES:
                raise WireError(f"{type(msg).__name__}.{f.name}: dtype {value.dtype} cannot be sent")
            value = np.ascontiguousarray(value)
            specs.append({"name": f.name, "dtype": value.dtype.name, "shape": list(value.shape)})
            buffers.append(value)
        else:
            fields[f.name] = list(value) if isinstance(value, tuple) else value
    header = {"v": PROTOCOL, "type": type(msg).__name__, "fields": fields, "arrays": specs}
    return [json.dumps(header, separators=(",", ":")).encode()] + buffers


def decode(frames: list):
    """Inverse of encode; frames may be bytes or zmq.Frame. Raises WireError on anything off."""
    if not frames:
        raise WireError("empty message")
    try:
        header = json.loads(bytes(frames[0]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    if header.get("v") != PROTOCOL:
        raise WireError(f"protocol version {header.get('v')!r}, expected {PROTOCOL}")
    cls = MESSAGE_TYPES.get(header.get("type"))
    if cls is None:
        raise WireError(f"unknown message type {header.get('type')!r}")
    specs, fields = header.get("arrays"), header.get("fields")
    if not isinstance(specs, list) or not isinstance(fields, dict):
        raise WireError("header needs 'fields' (object) and 'arrays' (list)")
    if len(specs) != len(frames) - 1:
        raise WireError(f"header lists {len(specs)} arrays but {len(frames) - 1} buffers came")
    kwargs = dict(fields)
    for spec, frame in zip(specs, frames[1:]):
        kwargs[spec["name"]] = _array(spec, frame)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise WireError(f"bad {cls.__name__}: {exc}") from None


def _array(spec, frame) -> np.ndarray:
    try:
        name, dtype, shape = spec["name"], spec["dtype"], tuple(int(s) for s in spec["shape"])
    except (KeyError, TypeError, ValueError):
        raise WireError(f"bad array spec {spec!r}") from None
    if dtype not in _DTYPES or any(s < 0 for s in shape):
        raise WireError(f"array {name!r}: bad dtype {dtype!r} or shape {shape}")
    buf = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if buf.nbytes != expected:
        raise WireError(f"array {name!r}: {buf.nbytes} bytes, expected {expected} for {dtype}{list(shape)}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)
