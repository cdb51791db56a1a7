"""Fuzzing the decoder: 10^5 mutated messages per type each give a valid message or a WireError, and an
Inbox counts every reject; the hostile messages of issue 9 are rejected one by one."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import zmq

from stream.events import EventLog
from stream.messages import (ClassUpdate, EndOfStream, Event, Frame, FrameDetections, FrameEmbeddings,
                             LabeledFrame, UnseenBatch)
from stream.sockets import Inbox, send
from stream.wire import HEADER_MAX, WireError, decode, encode

PER_TYPE = int(os.environ.get("FUZZ_PER_TYPE", 100_000))
IMAGE = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
XYXY = np.float32([[0, 0, 2, 1], [1, 0, 3, 2]])
TINY = {  # one small message per type: the fuzzer's seeds
    "Frame": Frame("s", 1, 5.0, IMAGE),
    "FrameDetections": FrameDetections(Frame("s", 1, 5.0, IMAGE), XYXY, np.float32([0.5, 0.9]), ("a", "b")),
    "FrameEmbeddings": FrameEmbeddings(Frame("s", 1, 5.0, IMAGE), XYXY, np.float32([0.5, 0.9]), ("a", "b"),
                                       np.float32([[1, 0, 0], [0, 1, 0]])),
    "LabeledFrame": LabeledFrame(Frame("s", 1, 5.0, IMAGE), XYXY, np.float32([0.5, 0.9]), ("a", "b"), ("x", "unseen"),
                                 np.array([True, False]), np.float32([0.1, np.inf]), np.int64([3, -1])),
    "UnseenBatch": UnseenBatch("s", 1, np.float32([[1, 0, 0]]), np.int64([4]), np.zeros((1, 2, 2, 3), np.uint8)),
    "ClassUpdate": ClassUpdate(3, ("x", "y"), np.float32([[1, 0, 0], [0, 1, 0]]), np.float32([0.2, 0.3]),
                               np.int64([9, 7]), np.int64([0, 0])),
    "Event": Event({"type": "frame_dropped", "ts": 5.0, "frames": [3, 4], "info": {"a": [1, {"b": 2.5}]}}),
    "EndOfStream": EndOfStream("s", 10, "end"),
}

# JSON texts a mutation writes into a header: wrong types, huge and odd numbers, deep nesting, names.
VALUES = [b"null", b"true", b"false", b"0", b"1", b"-1", b"2", b"3", b"4", b"2147483648", b"4294967296",
          b"9007199254740992", b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616",
          b"0.5", b"-0.0", b"2e18", b"1e308", b"1e400", b"-1e400", b"1e-400", b"NaN", b"Infinity", b"-Infinity",
          b"9" * 5000, b'""', b'"s"', b'"' + b"x" * 5000 + b'"', b'"\\udcff"', b'"\\u0000"', b'"float32"',
          b'"int64"', b'"bool"', b'"object"', b'"<f4"', b'"image"', b'"xyxy"', b'"embeddings"', b'"track"',
          b'"thumbs"', b'"Frame"', b'"Event"', b"[]", b"{}", b"[1]", b"[2,2,3]", b"[[1]]", b"[4294967296,4294967296]",
          b"[1,1,1,1,1]", b'{"a":1}', b'["a",1]', b"[null]", b"[" * 5000 + b"]" * 5000, b'{"a":' * 2000 + b"1"
          + b"}" * 2000, b'{"type":"x","ts":1}']
SHAPES = [b"0", b"1", b"2", b"3", b"-1", b"4294967296", b"1.0", b"1e400", b"true", b'"2"', b"null", b"[]",
          b"[1,1,1,1,1]", b"[4294967296,4294967296]", b"[268435457]"]
DTYPES = [b'"uint8"', b'"int32"', b'"int64"', b'"float16"', b'"float32"', b'"float64"', b'"bool"', b'"object"',
          b'"<f4"', b"1"]
KEYS = [b'"extra"', b'"image"', b'"xyxy"', b'"thumbs"', b'"record"', b'"index"', b'"v"', b'"name"', b'"shape"']
SPECIAL = [np.nan, np.inf, -np.inf, -1.0, 1e30, 2.0, 255.0]


def layout(value, path=(), out=None):
    """Compact JSON bytes of `value`, built so that every node's byte span is known:
    out["spans"] (path, start, end), out["cuts"] (start, end) removing one member or item with its comma,
    out["inserts"] (position just inside each container, object?, empty?)."""
    out = out if out is not None else {"text": bytearray(), "spans": [], "cuts": [], "inserts": []}
    text = out["text"]
    if isinstance(value, (dict, list)):
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        text += b"{" if isinstance(value, dict) else b"["
        out["inserts"].append((len(text), isinstance(value, dict), not items))
        members = []
        for i, (key, child) in enumerate(items):
            text += b"," if i else b""
            begin = len(text)
            text += json.dumps(key).encode() + b":" if isinstance(value, dict) else b""
            start = len(text)
            layout(child, path + (key,), out)
            out["spans"].append((path + (key,), start, len(text)))
            members.append((begin, len(text)))
        for i, (begin, end) in enumerate(members):  # a member goes with the comma after it, the last with the one before
            out["cuts"].append((begin, members[i + 1][0]) if i + 1 < len(members) else
                               (members[i - 1][1], end) if i else (begin, end))
        text += b"}" if isinstance(value, dict) else b"]"
    else:
        text += json.dumps(value).encode()
    return out


class Mutator:
    """Seeded mutations of one message's frames: header bytes, JSON values, shapes, dtypes, buffers, frame lists.
    JSON mutations splice bytes at precomputed spans, so a mutation costs a few microseconds."""

    def __init__(self, msg, seed: int):
        frames = encode(msg)
        header = json.loads(bytes(frames[0]))
        out = layout(header)
        self.header, self.buffers = bytes(out["text"]), [np.asarray(b).tobytes() for b in frames[1:]]
        self.spans, self.cuts, self.inserts = out["spans"], out["cuts"], out["inserts"]
        self.shapes = [(a, b) for path, a, b in self.spans if path[:1] == ("arrays",) and "shape" in path]
        self.dtypes = [(a, b) for path, a, b in self.spans if path[:1] == ("arrays",) and path[-1] == "dtype"]
        # per buffer, the byte size of one element and the special values written as that dtype
        self.specials = []
        for spec in header["arrays"]:
            with np.errstate(invalid="ignore", over="ignore"):
                values = np.array(SPECIAL).astype(spec["dtype"])
            self.specials.append((values.itemsize, [v.tobytes() for v in values] + [b"\x02" * values.itemsize]))
        self.r = random.Random(seed)
        self.header_ops = [self.flip_header, self.edit_bytes, self.truncate_header, self.replace_value,
                           self.replace_value, self.cut, self.insert, self.shape, self.dtype]
        self.buffer_ops = [self.flip_buffer, self.resize_buffer, self.buffer_value, self.buffer_value, self.frame_list]

    def __call__(self) -> list:
        r = self.r.random()
        header = self.r.choice(self.header_ops)() if r < 0.6 or not self.buffers else self.header
        frames = [header] + self.buffers
        if r >= 0.45:  # some get a header and a buffer mutation, some only the latter
            frames = self.r.choice(self.buffer_ops)(frames) if self.buffers else self.frame_list(frames)
        return frames

    def splice(self, start: int, end: int, text: bytes) -> bytes:
        return self.header[:start] + text + self.header[end:]

    def flip_header(self) -> bytes:
        data = bytearray(self.header)
        for _ in range(self.r.randint(1, 4)):
            data[self.r.randrange(len(data))] ^= 1 << self.r.randrange(8)
        return bytes(data)

    def edit_bytes(self) -> bytes:
        at, op = self.r.randrange(len(self.header)), self.r.randrange(3)
        new = bytes([self.r.choice(b'{}[]",:-.0123456789eEtfn \\u')])
        return self.splice(at, at + (op > 0), b"" if op == 1 else new)

    def truncate_header(self) -> bytes:
        return self.header[:self.r.randrange(len(self.header))]

    def replace_value(self) -> bytes:
        _, start, end = self.r.choice(self.spans)
        return self.splice(start, end, self.r.choice(VALUES))

    def cut(self) -> bytes:
        return self.splice(*self.r.choice(self.cuts), b"")

    def insert(self) -> bytes:
        at, is_object, empty = self.r.choice(self.inserts)
        member = (self.r.choice(KEYS) + b":" if is_object else b"") + self.r.choice(VALUES)
        return self.splice(at, at, member + (b"" if empty else b","))

    def shape(self) -> bytes:
        return self.splice(*self.r.choice(self.shapes), self.r.choice(SHAPES)) if self.shapes else self.cut()

    def dtype(self) -> bytes:
        return self.splice(*self.r.choice(self.dtypes), self.r.choice(DTYPES)) if self.dtypes else self.cut()

    def flip_buffer(self, frames) -> list:
        i = self.r.randrange(1, len(frames))
        data = bytearray(frames[i])
        if data:
            data[self.r.randrange(len(data))] ^= 1 << self.r.randrange(8)
        return frames[:i] + [bytes(data)] + frames[i + 1:]

    def resize_buffer(self, frames) -> list:
        i, k = self.r.randrange(1, len(frames)), self.r.choice([1, 2, 4, 8, 12])
        data = frames[i][:-k] if self.r.random() < 0.5 else frames[i] + bytes(k)
        return frames[:i] + [data] + frames[i + 1:]

    def buffer_value(self, frames) -> list:
        """A well-formed message whose contents are wrong: NaN, inf, negative ids, bool bytes of 2."""
        i = self.r.randrange(1, len(frames))
        size, specials = self.specials[i - 1]
        count = len(frames[i]) // size
        if not count:
            return frames
        at = self.r.randrange(count) * size
        return frames[:i] + [frames[i][:at] + self.r.choice(specials) + frames[i][at + size:]] + frames[i + 1:]

    def frame_list(self, frames) -> list:
        op = self.r.randrange(5)
        if op == 0:
            return frames[:self.r.randrange(len(frames))]
        if op == 1:
            return frames + [self.r.choice(frames)]
        if op == 2:
            return frames[1:] + frames[:1]
        if op == 3 and len(frames) > 2:
            i, j = self.r.sample(range(1, len(frames)), 2)
            frames = list(frames)
            frames[i], frames[j] = frames[j], frames[i]
            return frames
        return [frames[0], b""] + frames[1:]


def outcome(frames):
    """The decoded message, or None for a WireError; any other exception fails the test."""
    try:
        return decode(frames)
    except WireError:
        return None


@pytest.mark.parametrize("kind", sorted(TINY))
def test_mutated_messages_decode_or_raise_wire_error(kind):
    mutate = Mutator(TINY[kind], seed=sum(map(ord, kind)))
    assert encode(decode([mutate.header] + mutate.buffers))[0] == encode(TINY[kind])[0]  # the seed is sound
    accepted = 0
    for _ in range(PER_TYPE):
        frames = mutate()
        try:
            msg = outcome(frames)
        except Exception as exc:  # the point of the test
            pytest.fail(f"{type(exc).__name__}: {exc} escaped decode() for {[bytes(f)[:200] for f in frames]}")
        if msg is not None:  # what decodes is valid: it encodes again, and (checked for every 8th) round-trips
            accepted += 1
            sent = encode(msg)
            if accepted % 8 == 0:
                assert encode(decode([np.asarray(f).tobytes() for f in sent]))[0] == sent[0]
    assert 0 < accepted < PER_TYPE // 2  # the fuzzer reaches both sides


def test_inbox_counts_every_reject():
    """A subset over a real socket: the Inbox returns exactly what decodes and counts everything else."""
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("inproc://fuzz")
    push.connect("inproc://fuzz")
    accepts = (Frame, UnseenBatch, ClassUpdate, Event, EndOfStream)  # FrameDetections & co. are refused here
    inbox = Inbox(pull, "fuzz", accepts)
    expected_rejects = received = 0
    try:
        for seed, kind in enumerate(sorted(TINY)):
            mutate = Mutator(TINY[kind], seed=1000 + seed)
            for _ in range(300):
                frames = [f for f in mutate()] or [b""]
                msg = outcome(frames)
                expected_rejects += msg is None or not isinstance(msg, accepts)
                push.send_multipart(frames)
                got = inbox.recv(5000)
                received += got is not None
                assert inbox.rejected == expected_rejects
        assert received == 8 * 300 - expected_rejects and 0 < received < 8 * 300
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()


def hostile(kind: str, path=(), value=None, buffer=None, text=None) -> list:
    """TINY[kind] encoded with one change: header[path] = value, buffer (i, bytes) replaced, or text (old, new)
    replaced in the header's JSON."""
    frames = encode(TINY[kind])
    header = json.loads(bytes(frames[0]))
    if path:
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    buffers = [np.asarray(b).tobytes() for b in frames[1:]]
    if buffer:
        buffers[buffer[0]] = buffer[1]
    raw = json.dumps(header).encode()
    if text:
        assert text[0] in raw
        raw = raw.replace(*text)
    return [raw] + buffers


def nested(depth: int) -> bytes:
    return (b'{"v":1,"type":"Event","fields":{"record":{"type":"x","ts":1,"a":' + b"[" * depth + b"]" * depth
            + b'}},"arrays":[]}')


F32 = np.float32
HOSTILE = {  # name: (frames, what the error must mention)
    "shape [2^32, 2^32]": (hostile("UnseenBatch", ("arrays", 0, "shape"), [2 ** 32, 2 ** 32]), "shape"),
    "shape 1e400": (hostile("UnseenBatch", text=(b'"shape": [1, 3]', b'"shape": [1e400, 3]')), "1e400"),
    "shape of floats": (hostile("UnseenBatch", ("arrays", 0, "shape"), [1.0, 3.0]), "shape"),
    "shape of bools": (hostile("UnseenBatch", ("arrays", 1, "shape"), [True]), "shape"),
    "shape of strings": (hostile("UnseenBatch", ("arrays", 1, "shape"), ["1"]), "shape"),
    "rank 5": (hostile("UnseenBatch", ("arrays", 2, "shape"), [1, 1, 2, 2, 3]), "shape"),
    "header nested 10^5 deep": ([b"[" * 10 ** 5 + b"]" * 10 ** 5], "deep"),
    "record nested 10^5 deep": ([nested(10 ** 5)], "deep"),
    "record nested 100 deep": ([nested(100)], "deep"),
    "header over the size limit": ([b" " * (HEADER_MAX + 1) + b"{}"], "bytes"),
    "array name a list": (hostile("UnseenBatch", ("arrays", 0, "name"), ["embeddings"]), "array field"),
    "array name a dict": (hostile("UnseenBatch", ("arrays", 0, "name"), {"embeddings": 1}), "array field"),
    "array name repeated": (hostile("UnseenBatch", ("arrays", 1, "name"), "embeddings"), "twice"),
    "array name not a field": (hostile("UnseenBatch", ("arrays", 0, "name"), "image"), "array field"),
    "array also a field": (hostile("UnseenBatch", ("fields", "track"), [4]), "no field"),
    "type a list": (hostile("EndOfStream", ("type",), ["EndOfStream"]), "type"),
    "version true": (hostile("EndOfStream", ("v",), True), "protocol"),
    "NaN boxes": (hostile("FrameDetections", buffer=(1, F32([[np.nan, 0, 1, 1], [0, 0, 1, 1]]).tobytes())), "xyxy"),
    "1-D boxes": (hostile("FrameDetections", ("arrays", 1, "shape"), [8]), "xyxy"),
    "boxes out of range": (hostile("FrameDetections", buffer=(1, F32([[1e30, 0, 1, 1]] * 2).tobytes())), "xyxy"),
    "columns disagree": (hostile("FrameDetections", ("fields", "det_labels"), ["a"]), "rows"),
    "labels not strings": (hostile("FrameDetections", ("fields", "det_labels"), [1, 2]), "det_labels"),
    "labels a string": (hostile("FrameDetections", ("fields", "det_labels"), "ab"), "det_labels"),
    "lone surrogate": (hostile("EndOfStream", ("fields", "source"), "\udcff"), "source"),
    "ts as string": (hostile("Frame", ("fields", "ts"), "5.0"), "ts"),
    "ts huge int": (hostile("Frame", ("fields", "ts"), 10 ** 400), "ts"),
    "index negative": (hostile("Frame", ("fields", "index"), -1), "index"),
    "index a float": (hostile("Frame", ("fields", "index"), 1.0), "index"),
    "source too long": (hostile("Frame", ("fields", "source"), "s" * 5000), "source"),
    "0x0 image": (hostile("Frame", ("arrays", 0, "shape"), [0, 0, 3], buffer=(0, b"")), "image"),
    "image of floats": (hostile("Frame", ("arrays", 0, "dtype"), "float64",
                                buffer=(0, IMAGE.astype(np.float64).tobytes())), "image"),
    "image 2-D": (hostile("Frame", ("arrays", 0, "shape"), [2, 9]), "image"),
    "NaN embedding": (hostile("UnseenBatch", buffer=(0, F32([[np.nan, 0, 0]]).tobytes())), "embeddings"),
    "seen byte 2": (hostile("LabeledFrame", buffer=(3, b"\x02\x00")), "bool"),
    "NaN distance": (hostile("LabeledFrame", buffer=(4, F32([np.nan, 1]).tobytes())), "distance"),
    "ClassUpdate columns disagree": (hostile("ClassUpdate", ("fields", "names"), ["x"]), "centroids"),
    "ClassUpdate NaN centroid": (hostile("ClassUpdate", buffer=(0, F32([[np.nan, 0, 0], [0, 1, 0]]).tobytes())),
                                 "centroids"),
    "ClassUpdate repeated name": (hostile("ClassUpdate", ("fields", "names"), ["x", "x"]), "repeat"),
    "version 2e18": (hostile("ClassUpdate", ("fields", "version"), 2e18), "version"),
    "version 2*10^18": (hostile("ClassUpdate", ("fields", "version"), 2 * 10 ** 18), "version"),
    "NaN inside an event": (hostile("Event", text=(b"2.5", b"NaN")), "NaN"),
    "Infinity inside an event": (hostile("Event", text=(b"2.5", b"-Infinity")), "Infinity"),
    "1e400 inside an event": (hostile("Event", text=(b"2.5", b"1e400")), "1e400"),
    "event without ts": (hostile("Event", ("fields", "record"), {"type": "x"}), "ts"),
    "event record a list": (hostile("Event", ("fields", "record"), [1]), "record"),
    "frames negative": (hostile("EndOfStream", ("fields", "frames"), -5), "frames"),
    "not bytes": (["a string"], "bytes"),
    "no frames": ([], "empty"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_messages_are_rejected(name):
    frames, mentions = HOSTILE[name]
    with pytest.raises(WireError, match=mentions):
        decode(frames)


def test_local_events_with_nan_are_sanitized(tmp_path):
    """Stages build events in-process: NaN and inf become null there, and in the log at any depth."""
    msg = Event({"type": "x", "ts": 1.0, "radius": float("nan"), "nested": {"a": [float("inf"), 1.5]}})
    assert msg.record["radius"] is None and msg.record["nested"] == {"a": [None, 1.5]}
    assert decode(encode(msg)).record == msg.record
    log = EventLog(str(tmp_path / "ev.jsonl"))
    log.write({"type": "detection", "ts": 1.0, "distance": float("inf"), "bbox": [float("nan"), 1.0]})
    log.close()
    assert json.loads((tmp_path / "ev.jsonl").read_text()) == {"type": "detection", "ts": 1.0, "distance": None,
                                                                "bbox": [None, 1.0]}
