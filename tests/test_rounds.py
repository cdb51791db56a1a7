"""Discovery rounds of file sources: the gate asks every `cluster.period_frames` frames and waits for the
classes, the cluster stage answers every round, so a file run does not depend on the machine's speed."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from conftest import ROOT, frame_fields
from stages.config import ENDPOINT_NAMES, ClusterSettings, GateSettings, Settings, TransportSettings
from stages.gate import Rounds
from stream.messages import ClassUpdate, EndOfStream, Event, Frame, FrameEmbeddings, LabeledFrame, UnseenBatch
from stream.sockets import Inbox, open_socket, send
from stream.wire import WireError, decode, encode

DIM = 8
E = np.eye(DIM, dtype=np.float32)


def test_rounds_are_due_at_the_end_of_each_period_repeated_and_given_up_after_the_timeout():
    rounds = Rounds(period=25, timeout=60.0, again_s=2.0)
    assert [i for i in range(80) if rounds.due(i)] == [24, 49, 74]
    assert not rounds.waiting and rounds.again(1e9) is None
    asked = UnseenBatch("cam", 24, np.ones((3, DIM), np.float32), np.int64([1, 2, 3]), round=True)
    rounds.ask(asked, now=100.0)
    assert rounds.waiting and not rounds.expired(159.0)
    assert rounds.again(101.0) is None
    repeat = rounds.again(102.0)  # the same request, without its rows (they went with the first)
    assert (repeat.source, repeat.index, repeat.round, len(repeat), repeat.embeddings.shape[1]) == ("cam", 24, True, 0, DIM)
    assert rounds.again(103.0) is None and rounds.again(104.0) is not None
    rounds.answered()
    assert not rounds.waiting and not rounds.expired(1e9) and rounds.again(1e9) is None
    rounds.ask(asked, now=200.0)
    assert rounds.expired(260.0) and not rounds.waiting and rounds.unanswered == 1
    assert not rounds.expired(1e9)  # once
    rounds.stop()
    assert not any(rounds.due(i) for i in range(100))  # the end of the stream: no more waiting
    assert not any(Rounds(period=0, timeout=1.0).due(i) for i in range(100))  # live sources never wait


def test_the_round_flag_crosses_the_wire_and_a_forged_one_is_refused():
    batch = UnseenBatch("cam", 24, np.ones((2, DIM), np.float32), np.int64([1, 2]), round=True)
    assert decode(encode(batch)).round is True
    assert decode(encode(UnseenBatch("cam", 3, np.ones((1, DIM), np.float32), np.int64([1])))).round is False
    frames = encode(batch)
    for forged in (b'"round":"yes"', b'"round":1'):
        with pytest.raises(WireError, match="round must be true or false"):
            decode([frames[0].replace(b'"round":true', forged)] + frames[1:])


def start(stage: str, settings: Settings) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "stages", stage], stdin=subprocess.PIPE, cwd=ROOT)
    proc.stdin.write(settings.to_json().encode())
    proc.stdin.close()
    return proc


def frame(index: int, vectors: np.ndarray) -> FrameEmbeddings:
    n = len(vectors)
    return FrameEmbeddings(Frame(**frame_fields(index)), xyxy=np.tile(np.float32([1, 2, 20, 30]), (n, 1)),
                           scores=np.full(n, 0.9, np.float32), det_labels=("person",) * n, embeddings=vectors)


def update(version: int, n: int) -> ClassUpdate:
    """Classes novel-0 .. novel-(n-1), centred on the first n unit vectors."""
    return ClassUpdate(version, tuple(f"novel-{i}" for i in range(n)), E[:n], np.full(n, 0.2, np.float32),
                       np.full(n, 9, np.int64), np.zeros(n, np.int64))


def test_the_gate_asks_for_a_round_and_labels_nothing_more_until_the_classes_come(tmp_path):
    period = 4
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ENDPOINT_NAMES}
    settings = Settings(gate=GateSettings(track=False), cluster=ClusterSettings(period_frames=period),
                        transport=TransportSettings(endpoints=endpoints))  # a file-like run: not live
    ctx = zmq.Context()
    push = open_socket(ctx, zmq.PUSH, endpoints["embeddings"], bind=False, linger_ms=0)
    classes = open_socket(ctx, zmq.PUB, endpoints["classes"], bind=True, linger_ms=0)
    labeled = Inbox(open_socket(ctx, zmq.PULL, endpoints["labeled"], bind=True, linger_ms=0), "l",
                    (LabeledFrame, EndOfStream))
    unseen = Inbox(open_socket(ctx, zmq.PULL, endpoints["unseen"], bind=True, linger_ms=0), "u",
                   (UnseenBatch, EndOfStream))
    events = Inbox(open_socket(ctx, zmq.PULL, endpoints["events"], bind=True, linger_ms=0), "e", (Event,))
    proc = start("gate", settings)
    try:
        assert events.recv(20000).record["type"] == "stage_started"
        vectors = E[:2].copy()  # the first lies on novel-0, the second on novel-1
        index = 0
        for attempt in range(50):  # until the subscription is through (PUB/SUB drops before that)
            send(classes, update(attempt + 1, 1))  # also answers a round the gate may be waiting on
            time.sleep(0.1)
            send(push, frame(index, vectors))
            got = labeled.recv(20000)
            index += 1
            if got.labels[0] == "novel-0":
                break
        assert got.labels == ("novel-0", "unseen")
        while not Rounds(period, 1).due(index - 1):  # up to and including the next round's frame
            send(push, frame(index, vectors))
            assert labeled.recv(20000).labels == ("novel-0", "unseen")
            index += 1
        batches = []
        while unseen.sock.poll(2000):
            batches.append(unseen.recv(0))
        assert batches and batches[-1].index == index - 1 and batches[-1].round
        assert all(b.round == Rounds(period, 1).due(b.index) for b in batches)
        send(push, frame(index, vectors))  # must wait for the round's classes
        assert not labeled.sock.poll(1500)
        send(classes, update(100, 2))  # the round's outcome: novel-1 is new
        after = labeled.recv(20000)
        assert after.index == index and after.labels == ("novel-0", "novel-1")  # labelled with the new class
        send(push, EndOfStream("test", index + 1))
        while not isinstance(labeled.recv(20000), EndOfStream):
            pass
        assert proc.wait(timeout=30) == 0
        stopped = events.recv(5000).record
        assert stopped["type"] == "stage_stopped" and stopped["unanswered"] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for sock in (push, classes, labeled.sock, unseen.sock, events.sock):
            sock.close()
        ctx.term()


def test_the_cluster_stage_answers_every_round_and_clusters_only_when_asked(tmp_path):
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ENDPOINT_NAMES}
    settings = Settings(cluster=ClusterSettings(period_s=0.0, min_new=1, min_size=4),
                        transport=TransportSettings(endpoints=endpoints))  # a file-like run: rounds by frames
    ctx = zmq.Context()
    push = open_socket(ctx, zmq.PUSH, endpoints["unseen"], bind=False, linger_ms=0)
    sub = open_socket(ctx, zmq.SUB, endpoints["classes"], bind=False, linger_ms=0)
    classes = Inbox(sub, "c", (ClassUpdate,))
    events = Inbox(open_socket(ctx, zmq.PULL, endpoints["events"], bind=True, linger_ms=0), "e", (Event, EndOfStream))
    proc = start("cluster", settings)
    rng = np.random.default_rng(0)
    try:
        assert events.recv(20000).record["type"] == "stage_started"
        for attempt in range(50):  # an empty round is answered too: until the subscription is through
            send(push, UnseenBatch("cam", 4 * attempt + 3, np.zeros((0, DIM), np.float32), np.zeros(0, np.int64),
                                   round=True))
            if sub.poll(300):
                break
        assert len(classes.recv(0)) == 0  # answered, nothing to discover
        while sub.poll(3000):  # answers to the earlier attempts, late on a loaded machine: all empty
            assert len(classes.recv(0)) == 0
        # two kinds of thing, four tracks each, three views a track: a class each once clustered
        things = np.repeat(E[:2], 4, axis=0) + 0.15 * rng.normal(size=(8, DIM))   # 8 objects of 2 kinds
        x = (np.repeat(things, 3, axis=0) + 1e-3 * rng.normal(size=(24, DIM))).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        tracks = np.repeat(np.arange(8), 3).astype(np.int64)
        send(push, UnseenBatch("cam", 1000, x, tracks))  # period_s 0 and min_new 1: a live run would cluster now
        assert not sub.poll(1500)  # a file run clusters only when the gate asks
        ask = UnseenBatch("cam", 1003, np.zeros((0, DIM), np.float32), np.zeros(0, np.int64), round=True)
        send(push, ask)
        assert sub.poll(20000)
        assert len(classes.recv(0)) == 2  # the round asked for: both kinds
        third = (np.repeat(E[2:3] + 0.15 * rng.normal(size=(4, DIM)), 3, axis=0)
                 + 1e-3 * rng.normal(size=(12, DIM))).astype(np.float32)   # 4 objects of a third kind
        send(push, UnseenBatch("cam", 1004, third / np.linalg.norm(third, axis=1, keepdims=True),
                               np.repeat(np.arange(8, 12), 3).astype(np.int64)))
        send(push, ask)  # the gate asking again (an answer lost): answered, not run again
        assert sub.poll(20000)
        assert len(classes.recv(0)) == 2
        send(push, dataclasses.replace(ask, index=1007))  # the next round finds the third kind
        assert sub.poll(20000)
        assert len(classes.recv(0)) == 3
        send(push, EndOfStream("cam", 1008))
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for sock in (push, sub, events.sock):
            sock.close()
        ctx.term()
