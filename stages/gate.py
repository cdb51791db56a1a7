"""Gate stage (SKZC's SDDC box labeler): seen class or unseen for every box; unseen ones go to clustering."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zmq

from models.sddc import Gate, load_gate, normalize
from stages.config import ConfigError
from stages.process import StageProcess
from stream.messages import ClassUpdate, EndOfStream, FrameEmbeddings, LabeledFrame, UnseenBatch
from stream.sockets import Inbox, send


def label(gate: Gate, msg: FrameEmbeddings) -> tuple[LabeledFrame, UnseenBatch]:
    """Labels every box of one frame; returns the labeled frame and its unseen boxes' embeddings."""
    x = normalize(msg.embeddings) if len(msg) else np.zeros((0, msg.embeddings.shape[1]), np.float32)
    index, distance = gate.classify(x)
    seen = index >= 0
    track = np.full(len(msg), -1, np.int64)
    labeled = LabeledFrame(msg.source, msg.index, msg.ts, msg.image, msg.xyxy, msg.scores, msg.det_labels,
                           tuple(gate.labels(index)), seen, distance, track)
    return labeled, UnseenBatch(msg.source, msg.index, x[~seen], track[~seen])


def apply_update(update: ClassUpdate, set_size: int) -> Gate:
    """The gate's classes become exactly the update's (the cluster stage owns the class memory)."""
    return Gate(list(update.names), update.centroids.astype(np.float32), update.radii.astype(np.float32),
                update.sizes.astype(np.int64), update.set_ids.astype(np.int64), set_size)


def load_memory(path: str | None, set_size: int) -> Gate:
    """The class memory file if it exists (a path that does not exist yet starts empty)."""
    if path and Path(path).exists():
        try:
            return load_gate(path)
        except ValueError as exc:
            raise ConfigError(f"gate.memory: {exc}") from None
    return Gate.empty(set_size=set_size)


def run(stage: StageProcess) -> int:
    s = stage.settings.gate
    inbox = Inbox(stage.socket(zmq.PULL, "embeddings", bind=False), "gate", (FrameEmbeddings, EndOfStream))
    classes = Inbox(stage.socket(zmq.SUB, "classes", bind=False), "gate/classes", (ClassUpdate,))
    to_sink = stage.socket(zmq.PUSH, "labeled", bind=False)
    to_cluster = stage.socket(zmq.PUSH, "unseen", bind=False)
    gate = load_memory(s.memory, s.set_size)
    version = -1
    poller = zmq.Poller()
    poller.register(inbox.sock, zmq.POLLIN)
    poller.register(classes.sock, zmq.POLLIN)
    stage.started(alpha=s.alpha, set_size=s.set_size)
    frames = 0
    while True:
        ready = dict(poller.poll(200))
        if classes.sock in ready:  # class updates first, so a new class labels the very next frame
            update = classes.recv(0)
            if update is not None and update.version > version:
                gate, version = apply_update(update, s.set_size), update.version
                stage.log.info("applied class update %d: %d classes", version, len(gate))
        if inbox.sock not in ready:
            continue
        msg = inbox.recv(0)
        if isinstance(msg, EndOfStream):
            send(to_cluster, msg)
            send(to_sink, msg)
            break
        if msg is not None:
            labeled, unseen = label(gate, msg)
            send(to_sink, labeled)
            if len(unseen):
                send(to_cluster, unseen)
            frames += 1
    stage.emit("stage_stopped", frames=frames, rejected=inbox.rejected + classes.rejected, classes=len(gate))
    return 0
