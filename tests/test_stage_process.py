"""A real stage process (the gate): malformed input is counted and skipped, class updates apply live."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from conftest import ROOT, frame_fields
from stages.config import ENDPOINT_NAMES, ClusterSettings, GateSettings, Settings, TransportSettings
from stream.messages import ClassUpdate, EndOfStream, Event, Frame, FrameEmbeddings, LabeledFrame
from stream.sockets import Inbox, open_socket, send

DIM = 8


def free_tcp_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


@pytest.fixture(params=["ipc", "tcp"])
def gate_process(tmp_path, request):
    """Starts `python -m stages gate`; the test holds the other end of every socket (ipc or loopback tcp)."""
    if request.param == "ipc":
        endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ENDPOINT_NAMES}
    else:
        endpoints = {name: f"tcp://127.0.0.1:{port}" for name, port in zip(ENDPOINT_NAMES, free_tcp_ports(len(ENDPOINT_NAMES)))}
    # untracked: every unseen box goes to clustering at once (tracking is tested in test_tracks.py)
    # reorder_frames=1: these tests send frames with gaps in their indices (reordering: tests/test_reorder.py)
    # period_frames=0: no cluster stage answers discovery rounds here (tests/test_rounds.py)
    settings = Settings(gate=GateSettings(track=False, reorder_frames=1), cluster=ClusterSettings(period_frames=0),
                        # tcp here is plain: tests/test_security.py runs CURVE
                        transport=TransportSettings(endpoints=endpoints, insecure_tcp=request.param == "tcp"))
    ctx = zmq.Context()
    socks = {
        "embeddings": open_socket(ctx, zmq.PUSH, endpoints["embeddings"], bind=False, linger_ms=0),  # the gate binds
        "classes": open_socket(ctx, zmq.PUB, endpoints["classes"], bind=True, linger_ms=0),
        "labeled": open_socket(ctx, zmq.PULL, endpoints["labeled"], bind=True, linger_ms=0),
        "unseen": open_socket(ctx, zmq.PULL, endpoints["unseen"], bind=True, linger_ms=0),
        "events": open_socket(ctx, zmq.PULL, endpoints["events"], bind=True, linger_ms=0),
    }
    proc = subprocess.Popen([sys.executable, "-m", "stages", "gate"], stdin=subprocess.PIPE, cwd=ROOT)
    proc.stdin.write(settings.to_json().encode())
    proc.stdin.close()
    events = Inbox(socks["events"], "events", (Event,))
    started = events.recv(20000)
    assert started is not None and started.record["type"] == "stage_started" and started.record["pid"] == proc.pid
    yield proc, socks, events
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for sock in socks.values():
        sock.close()
    ctx.term()


def embeddings_msg(index: int, vectors: np.ndarray) -> FrameEmbeddings:
    n = len(vectors)
    return FrameEmbeddings(Frame(**frame_fields(index)), xyxy=np.tile(np.float32([1, 2, 20, 30]), (n, 1)),
                           scores=np.full(n, 0.9, np.float32), det_labels=("person",) * n,
                           embeddings=vectors.astype(np.float32))


def test_gate_rejects_bad_messages_applies_updates_and_forwards_end(gate_process):
    proc, socks, events = gate_process
    labeled = Inbox(socks["labeled"], "labeled", (LabeledFrame, EndOfStream))
    centroid = np.eye(DIM, dtype=np.float32)[0]
    update = ClassUpdate(1, ("novel-1",), centroid[None], np.float32([0.2]), np.int64([9]), np.int64([0]))
    vectors = np.stack([centroid, np.eye(DIM, dtype=np.float32)[1]])  # one inside the class, one far away

    socks["embeddings"].send_multipart([b"{broken json"])
    socks["embeddings"].send_multipart([b'{"v": 999, "type": "Frame", "fields": {}, "arrays": []}'])
    send(socks["embeddings"], embeddings_msg(0, vectors))
    first = labeled.recv(10000)
    assert first.labels == ("unseen", "unseen")  # no class yet
    assert socks["unseen"].poll(5000)

    # PUB/SUB drops messages until the subscription is through: publish until the gate applies it.
    for attempt in range(50):
        send(socks["classes"], update)
        time.sleep(0.1)
        send(socks["embeddings"], embeddings_msg(attempt + 1, vectors))
        msg = labeled.recv(10000)
        if msg.labels[0] == "novel-1":
            break
    assert msg.labels == ("novel-1", "unseen") and msg.seen.tolist() == [True, False]
    assert msg.distance[0] == pytest.approx(0.0, abs=1e-6)

    send(socks["embeddings"], EndOfStream("test", 3))
    while not isinstance(msg, EndOfStream):
        msg = labeled.recv(10000)
    assert proc.wait(timeout=20) == 0
    stopped = events.recv(2000)
    assert stopped.record["type"] == "stage_stopped" and stopped.record["rejected"] == 2


def class_update(version: int, name: str, dim: int = DIM) -> ClassUpdate:
    return ClassUpdate(version, (name,), np.eye(dim, dtype=np.float32)[:1], np.float32([0.2]), np.int64([9]),
                       np.int64([0]))


@pytest.mark.parametrize("gate_process", ["ipc"], indirect=True)
def test_gate_counts_wrong_dimensions_and_no_version_stalls_it(gate_process):
    """Issue 9: a class update of another dimension crashed the gate, and one of version 2e18 (now refused
    by the decoder; 2**53 - 1 is the largest allowed) made it ignore every later update."""
    proc, socks, events = gate_process
    labeled = Inbox(socks["labeled"], "labeled", (LabeledFrame, EndOfStream))
    vectors = np.eye(DIM, dtype=np.float32)[:2]  # the first lies on every update's centroid

    def label_of_next_frame(index: int) -> str:
        send(socks["embeddings"], embeddings_msg(index, vectors))
        return labeled.recv(10000).labels[0]

    assert label_of_next_frame(0) == "unseen"
    for attempt in range(50):  # until the subscription is through
        send(socks["classes"], class_update(5, "novel-1"))
        time.sleep(0.1)
        if label_of_next_frame(attempt + 1) == "novel-1":
            break
    send(socks["classes"], class_update(6, "novel-x", dim=4))  # another dimension: rejected, counted
    send(socks["classes"], class_update(2 ** 53 - 1, "novel-9"))  # a forged newest version...
    send(socks["classes"], class_update(2, "novel-2"))  # ...does not stop the next update
    for attempt in range(50):
        time.sleep(0.1)
        if label_of_next_frame(100 + attempt) == "novel-2":
            break
    assert label_of_next_frame(200) == "novel-2"
    send(socks["embeddings"], embeddings_msg(201, np.eye(4, dtype=np.float32)[:2]))  # frame of another dim: rejected
    assert label_of_next_frame(202) == "novel-2"
    send(socks["embeddings"], EndOfStream("test", 203))
    while not isinstance(labeled.recv(10000), EndOfStream):
        pass
    assert proc.wait(timeout=20) == 0
    stopped = events.recv(2000)
    assert stopped.record["type"] == "stage_stopped" and stopped.record["rejected"] == 2
