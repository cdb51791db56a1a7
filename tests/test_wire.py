"""Wire format: every message type round-trips (empty case included); bad input is rejected, not fatal."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import zmq

from conftest import frame_fields
from stream.messages import (ClassUpdate, EndOfStream, Event, Frame, FrameDetections, FrameEmbeddings,
                             LabeledFrame, UnseenBatch)
from stream.sockets import Inbox, open_socket, send
from stream.wire import PROTOCOL, WireError, decode, encode


def boxes(n: int) -> dict:
    rng = np.random.default_rng(n)
    return {"xyxy": rng.random((n, 4), dtype=np.float32) * 40, "scores": rng.random(n, dtype=np.float32),
            "det_labels": tuple(f"c{i}" for i in range(n))}


def labeled(n: int) -> LabeledFrame:
    return LabeledFrame(Frame(**frame_fields(3)), **boxes(n), labels=tuple("novel-1" for _ in range(n)),
                        seen=np.arange(n) % 2 == 0, distance=np.linspace(0, 1, n, dtype=np.float32),
                        track=np.arange(n, dtype=np.int64))


CASES = {
    "frame": Frame(**frame_fields(1)),
    "detections": FrameDetections(Frame(**frame_fields(2)), **boxes(3)),
    "detections-empty": FrameDetections.empty(Frame(**frame_fields(2))),
    "embeddings": FrameEmbeddings(Frame(**frame_fields(2)), **boxes(2), embeddings=np.ones((2, 8), np.float32)),
    "embeddings-empty": FrameEmbeddings(Frame(**frame_fields(2)), **boxes(0), embeddings=np.zeros((0, 8), np.float32)),
    "labeled": labeled(4),
    "labeled-empty": labeled(0),
    "unseen": UnseenBatch("s", 5, np.ones((3, 8), np.float32), np.array([1, -1, 2])),
    "unseen-empty": UnseenBatch("s", 5, np.zeros((0, 8), np.float32), np.zeros(0, np.int64)),
    "unseen-thumbs": UnseenBatch("s", 5, np.ones((2, 8), np.float32), np.array([1, -1]), np.zeros((2, 4, 4, 3), np.uint8)),
    "classes": ClassUpdate(2, ("novel-1", "novel-2"), np.eye(2, 8, dtype=np.float32), np.array([0.1, 0.2], np.float32),
                           np.array([9, 12]), np.array([0, 0])),
    "classes-centred": ClassUpdate(3, ("a", "b"), np.eye(2, 8, dtype=np.float32), np.array([0.1, 0.2], np.float32),
                                   np.array([9, 12]), np.array([0, 0]), np.full(8, 0.25, np.float32)),
    "classes-empty": ClassUpdate(0, (), np.zeros((0, 8), np.float32), np.zeros(0, np.float32),
                                 np.zeros(0, np.int64), np.zeros(0, np.int64)),
    "classes-newest-version": ClassUpdate(2 ** 53 - 1, (), np.zeros((0, 0), np.float32), np.zeros(0, np.float32),
                                          np.zeros(0, np.int64), np.zeros(0, np.int64)),
    "event": Event({"type": "frame_dropped", "ts": 1.5, "frames": [3, 4], "count": 2}),
    "event-nested": Event({"type": "x", "ts": 2, "a": {"b": [1, "c", None, True, {"d": -0.5}]}}),
    "eos": EndOfStream("s", 795, "end"),
}


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            assert other.dtype == value.dtype and other.shape == value.shape, name
            np.testing.assert_array_equal(other, value, err_msg=name)
        elif isinstance(value, Frame):
            assert_same(value, other)
        else:
            assert other == value, name


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name):
    msg = CASES[name]
    frames = encode(msg)
    assert_same(decode([bytes(memoryview(f)) for f in frames]), msg)


IMAGE = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
XYXY = np.float32([[0, 0, 2, 1], [1, 0, 3, 2]])
# sha256 of every frame's bytes as protocol 1 sent them when box messages subclassed Frame (the commit
# before they held one): holding the frame changed the classes, not one byte on the wire.
PINNED = [
    (lambda: FrameDetections(Frame("s", 1, 5.0, IMAGE), XYXY, np.float32([0.5, 0.9]), ("a", "b"),
                             origins=("detector", "motion")),
     "f3966033bfd6c9c5a95c3bd36539d8706d689a5f4d8ccaf769cb5294727046e6"),
    (lambda: FrameEmbeddings(Frame("s", 1, 5.0, IMAGE), XYXY, np.float32([0.5, 0.9]), ("a", "b"),
                             np.float32([[1, 0, 0], [0, 1, 0]])),
     "a3352a21ed71e69ab300a707e52f2742b2ad6c13dd2acc9afbad48b3a776df47"),
    (lambda: LabeledFrame(Frame("s", 1, 5.0, IMAGE), XYXY, np.float32([0.5, 0.9]), ("a", "b"), ("x", "unseen"),
                          np.array([True, False]), np.float32([0.1, 2.0]), np.int64([3, -1])),
     "400d1862bfc7ae8c3a066cf610b1558255c927b2de5f91faddcb92897d5ba383"),
]


@pytest.mark.parametrize("make, digest", PINNED, ids=["detections", "embeddings", "labeled"])
def test_box_messages_keep_the_protocol_1_layout(make, digest):
    frames = encode(make())
    assert hashlib.sha256(b"".join(bytes(memoryview(f)) for f in frames)).hexdigest() == digest
    header = json.loads(frames[0])
    assert "frame" not in header["fields"] and header["arrays"][0]["name"] == "image"


def test_a_header_naming_the_frame_field_is_refused():
    header, *buffers = encode(CASES["detections"])
    bad = json.loads(header)
    bad["fields"]["frame"] = None
    with pytest.raises(WireError, match="no field 'frame'"):
        decode([json.dumps(bad).encode(), *buffers])
    bad = json.loads(header)
    del bad["fields"]["source"]
    with pytest.raises(WireError, match="bad FrameDetections"):
        decode([json.dumps(bad).encode(), *buffers])


def test_box_messages_hold_a_frame_and_are_not_one():
    detections, labeled_frame = CASES["detections"], labeled(2)
    assert isinstance(detections.frame, Frame) and not isinstance(detections, Frame)
    for cls in (FrameDetections, FrameEmbeddings, LabeledFrame):
        assert not issubclass(cls, Frame) and [c for c in (FrameDetections, FrameEmbeddings, LabeledFrame)
                                                 if issubclass(cls, c)] == [cls]
    assert (labeled_frame.source, labeled_frame.index, labeled_frame.ts) == ("test", 3, 1003.0)
    assert labeled_frame.image is labeled_frame.frame.image
    with pytest.raises(ValueError, match="frame must be a Frame"):
        FrameDetections(detections, detections.xyxy, detections.scores, detections.det_labels)


@pytest.mark.parametrize("accepts, wrong", [
    ((Frame, EndOfStream), "detections"),      # detect: boxes are not a frame
    ((FrameDetections, EndOfStream), "labeled"),  # embed: a labeled frame is not a detection
    ((FrameDetections, EndOfStream), "embeddings"),
    ((FrameEmbeddings, EndOfStream), "labeled"),  # gate
    ((LabeledFrame, EndOfStream), "detections"),  # sink
])
def test_an_inbox_accepts_only_its_own_types(accepts, wrong):
    ctx = zmq.Context()
    try:
        address = f"inproc://inbox-{id(accepts)}-{wrong}"
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        for sock in (pull, push):
            sock.setsockopt(zmq.LINGER, 0)
        pull.bind(address)
        push.connect(address)
        inbox = Inbox(pull, "test", accepts)
        message = labeled(2) if wrong == "labeled" else CASES[wrong]
        send(push, message)
        assert inbox.recv(timeout_ms=5000) is None and inbox.rejected == 1
        right = {Frame: CASES["frame"], FrameDetections: CASES["detections"], FrameEmbeddings: CASES["embeddings"],
                 LabeledFrame: labeled(2)}[accepts[0]]
        send(push, right)
        assert type(inbox.recv(timeout_ms=5000)) is accepts[0] and inbox.rejected == 1
    finally:
        pull.close()
        push.close()
        ctx.term()


def test_header_is_versioned_json_with_array_specs():
    header = json.loads(encode(CASES["detections"])[0])
    assert header["v"] == PROTOCOL and header["type"] == "FrameDetections"
    assert header["fields"]["index"] == 2 and header["fields"]["det_labels"] == ["c0", "c1", "c2"]
    assert {"name": "xyxy", "dtype": "float32", "shape": [3, 4]} in header["arrays"]


def _header(**changes) -> list:
    frames = encode(CASES["unseen"])
    header = json.loads(frames[0])
    header.update(changes)
    return [json.dumps(header).encode()] + [bytes(memoryview(f)) for f in frames[1:]]


BAD = {
    "empty": [],
    "not json": [b"\x80garbage"],
    "json list": [b"[1, 2]"],
    "wrong version": _header(v=PROTOCOL + 1),
    "unknown type": _header(type="Pickled"),
    "object dtype": _header(arrays=[{"name": "embeddings", "dtype": "object", "shape": [3, 8]},
                                    {"name": "track", "dtype": "int64", "shape": [3]}]),
    "short buffer": _header(arrays=[{"name": "embeddings", "dtype": "float32", "shape": [4, 8]},
                                    {"name": "track", "dtype": "int64", "shape": [3]}]),
    "missing buffer": _header()[:-1],
    "extra buffer": _header() + [b""],
    "header key missing": [json.dumps({"v": PROTOCOL, "type": "EndOfStream", "fields": {}}).encode()],
    "header key extra": _header(extra=1),
    "version as bool": _header(v=True),
    "type unhashable": _header(type=["UnseenBatch"]),
    "array name unhashable": _header(arrays=[{"name": ["embeddings"], "dtype": "float32", "shape": [3, 8]},
                                             {"name": "track", "dtype": "int64", "shape": [3]}]),
    "array spec key extra": _header(arrays=[{"name": "embeddings", "dtype": "float32", "shape": [3, 8], "x": 1},
                                            {"name": "track", "dtype": "int64", "shape": [3]}]),
    "shape overflows int64": _header(arrays=[{"name": "embeddings", "dtype": "float32", "shape": [2 ** 32, 2 ** 32]},
                                             {"name": "track", "dtype": "int64", "shape": [3]}]),
    "negative shape": _header(arrays=[{"name": "embeddings", "dtype": "float32", "shape": [-3, -8]},
                                      {"name": "track", "dtype": "int64", "shape": [3]}]),
    "float shape": _header(arrays=[{"name": "embeddings", "dtype": "float32", "shape": [3.0, 8]},
                                   {"name": "track", "dtype": "int64", "shape": [3]}]),
    "NaN constant": [b'{"v": 1, "type": "EndOfStream", "fields": {"source": "s", "frames": NaN}, "arrays": []}'],
    "buffer not bytes": [encode(CASES["frame"])[0], 42],
    "header not bytes": [{"v": PROTOCOL}],
    "missing field": _header(fields={"source": "s"}),
    "unknown field": _header(arrays=[{"name": "embeddings", "dtype": "float32", "shape": [3, 8]},
                                        {"name": "track", "dtype": "int64", "shape": [3]}],
                                fields={"source": "s", "index": 1, "extra": 2}),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_messages_raise_wire_error(name):
    with pytest.raises(WireError):
        decode(BAD[name])


def _frame(**changes) -> dict:
    return {**frame_fields(1), **changes}


INVALID = {  # contents a message refuses when it is built, in-process or by the decoder
    "0x0 image": lambda: Frame(**_frame(image=np.zeros((0, 0, 3), np.uint8))),
    "gray image": lambda: Frame(**_frame(image=np.zeros((4, 4), np.uint8))),
    "float image": lambda: Frame(**_frame(image=np.zeros((4, 4, 3), np.float32))),
    "ts as string": lambda: Frame(**_frame(ts="now")),
    "ts NaN": lambda: Frame(**_frame(ts=float("nan"))),
    "index negative": lambda: Frame(**_frame(index=-1)),
    "index bool": lambda: Frame(**_frame(index=True)),
    "source not a string": lambda: Frame(**_frame(source=3)),
    "NaN box": lambda: FrameDetections(Frame(**_frame()), **{**boxes(2), "xyxy": np.float32([[np.nan, 0, 1, 1]] * 2)}),
    "1-D boxes": lambda: FrameDetections(Frame(**_frame()), **{**boxes(2), "xyxy": np.zeros(8, np.float32)}),
    "inf score": lambda: FrameDetections(Frame(**_frame()), **{**boxes(2), "scores": np.float32([np.inf, 0])}),
    "labels not strings": lambda: FrameDetections(Frame(**_frame()), **{**boxes(2), "det_labels": (1, 2)}),
    "embeddings of dim 0": lambda: FrameEmbeddings(Frame(**_frame()), **boxes(2), embeddings=np.zeros((2, 0), np.float32)),
    "NaN distance": lambda: LabeledFrame(**{**vars(labeled(2)), "distance": np.float32([np.nan, 1])}),
    "track below -1": lambda: LabeledFrame(**{**vars(labeled(2)), "track": np.int64([0, -2])}),
    "thumbs not square": lambda: UnseenBatch("s", 1, np.ones((1, 8), np.float32), np.int64([0]),
                                             np.zeros((1, 4, 5, 3), np.uint8)),
    "version 2e18": lambda: ClassUpdate(2e18, (), np.zeros((0, 8), np.float32), np.zeros(0, np.float32),
                                        np.zeros(0, np.int64), np.zeros(0, np.int64)),
    "version 2**53": lambda: ClassUpdate(2 ** 53, (), np.zeros((0, 8), np.float32), np.zeros(0, np.float32),
                                         np.zeros(0, np.int64), np.zeros(0, np.int64)),
    "class names repeat": lambda: ClassUpdate(1, ("a", "a"), np.ones((2, 8), np.float32), np.ones(2, np.float32),
                                              np.ones(2, np.int64), np.zeros(2, np.int64)),
    "class radius NaN": lambda: ClassUpdate(1, ("a",), np.ones((1, 8), np.float32), np.float32([np.nan]),
                                            np.ones(1, np.int64), np.zeros(1, np.int64)),
    "class columns disagree": lambda: ClassUpdate(1, ("a",), np.ones((2, 8), np.float32), np.ones(1, np.float32),
                                                  np.ones(1, np.int64), np.zeros(1, np.int64)),
    "class centre of another dim": lambda: ClassUpdate(1, ("a",), np.ones((1, 8), np.float32), np.ones(1, np.float32),
                                                       np.ones(1, np.int64), np.zeros(1, np.int64), np.ones(4, np.float32)),
    "class centre NaN": lambda: ClassUpdate(1, ("a",), np.ones((1, 8), np.float32), np.ones(1, np.float32),
                                            np.ones(1, np.int64), np.zeros(1, np.int64), np.full(8, np.nan, np.float32)),
    "event ts NaN": lambda: Event({"type": "x", "ts": float("nan")}),
    "event without type": lambda: Event({"ts": 1.0}),
    "end frames negative": lambda: EndOfStream("s", -1),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_contents_are_refused(name):
    with pytest.raises(ValueError):
        INVALID[name]()


def test_inbox_counts_rejects_and_keeps_receiving(tmp_path):
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/in"
    pull = open_socket(ctx, zmq.PULL, endpoint, bind=True, linger_ms=0)
    push = open_socket(ctx, zmq.PUSH, endpoint, bind=False, linger_ms=0)
    inbox = Inbox(pull, "test", (UnseenBatch, EndOfStream))
    try:
        push.send_multipart([b"not json"])
        push.send_multipart(_header(v=99))
        send(push, CASES["event"])  # valid, but not a type this socket takes
        send(push, CASES["unseen"])
        got = [inbox.recv(2000) for _ in range(4)]
        assert got[:3] == [None, None, None] and inbox.rejected == 3
        assert_same(got[3], CASES["unseen"])
    finally:
        push.close()
        pull.close()
        ctx.term()


def test_inbox_counts_a_decoder_bug_as_a_reject(tmp_path, monkeypatch):
    def broken(frames):
        raise IndexError("a bug")
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/in"
    pull = open_socket(ctx, zmq.PULL, endpoint, bind=True, linger_ms=0)
    push = open_socket(ctx, zmq.PUSH, endpoint, bind=False, linger_ms=0)
    inbox = Inbox(pull, "test", (EndOfStream,))
    try:
        monkeypatch.setattr("stream.sockets.decode", broken)
        send(push, CASES["eos"])
        assert inbox.recv(2000) is None and inbox.rejected == 1
        monkeypatch.undo()
        send(push, CASES["eos"])
        assert inbox.recv(2000) == CASES["eos"] and inbox.rejected == 1
    finally:
        push.close()
        pull.close()
        ctx.term()


def test_box_messages_select_by_mask():
    msg = labeled(4)
    picked = msg[msg.seen]
    assert len(picked) == 2 and picked.labels == ("novel-1", "novel-1")
    np.testing.assert_array_equal(picked.track, [0, 2])
    assert picked.index == msg.index and picked.image is msg.image


def test_box_columns_must_agree():
    with pytest.raises(ValueError, match="rows"):
        FrameDetections(Frame(**frame_fields()), xyxy=np.zeros((2, 4), np.float32), scores=np.zeros(3, np.float32),
                        det_labels=("a", "b"))


def test_a_class_update_from_a_sender_without_centres_decodes_uncentred():
    header, *buffers = encode(CASES["classes"])
    h = json.loads(header)
    keep = [i for i, a in enumerate(h["arrays"]) if a["name"] != "center"]
    h["arrays"] = [h["arrays"][i] for i in keep]
    back = decode([json.dumps(h).encode()] + [buffers[i] for i in keep])
    assert back.center.shape == (0,) and back.names == ("novel-1", "novel-2")
