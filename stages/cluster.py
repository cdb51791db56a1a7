"""Cluster stage (SKZC's KCH, label-free): buffers unseen embeddings, periodically turns dense groups into classes."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from models.kch import deduplicate, knn_clusters
from models.sddc import Gate, centroid_and_radius, save_gate
from stages.config import ClusterSettings
from stages.gate import load_memory
from stages.process import StageProcess
from stream.messages import ClassUpdate, EndOfStream, UnseenBatch
from stream.sockets import Inbox, send


@dataclass
class UnseenBuffer:
    """The newest `capacity` unseen embeddings with the track each came from."""
    capacity: int
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (M, D)
    tracks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))            # (M,)

    def add(self, batch: UnseenBatch) -> None:
        if len(self.embeddings) == 0:
            self.embeddings = np.zeros((0, batch.embeddings.shape[1]), np.float32)
        if batch.embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"unseen embeddings of dim {batch.embeddings.shape[1]}, buffer holds "
                             f"{self.embeddings.shape[1]}")
        self.embeddings = np.vstack([self.embeddings, batch.embeddings])[-self.capacity:]
        self.tracks = np.concatenate([self.tracks, batch.track])[-self.capacity:]

    def keep(self, mask: np.ndarray) -> None:
        self.embeddings, self.tracks = self.embeddings[mask], self.tracks[mask]

    def __len__(self) -> int:
        return len(self.embeddings)


def discover(gate: Gate, buffer: UnseenBuffer, s: ClusterSettings, alpha: float) -> tuple[list[str], list[str]]:
    """Clusters the buffer; each dense group either grows the class whose centroid it sits on (its
    centroid within that class's radius, or the class centroid within the group's) or becomes a new
    class. Rows that then belong to a class leave the buffer. Returns (new names, grown names)."""
    if len(buffer) == 0:
        return [], []
    buffer.keep(gate.classify(buffer.embeddings)[0] < 0)  # rows a class discovered since now covers
    keep = deduplicate(buffer.embeddings, s.dedup_similarity)
    labels = knn_clusters(buffer.embeddings[keep], s.k, s.min_similarity, s.min_size, buffer.tracks[keep])
    new, grown = [], []
    for c in range(labels.max(initial=-1) + 1):
        members = buffer.embeddings[keep[labels == c]]
        centroid, radius = centroid_and_radius(members, alpha)
        if len(gate):
            d = np.linalg.norm(gate.centroids - centroid, axis=1)
            i = int(np.argmin(d))
            if d[i] <= max(gate.radii[i], radius):
                gate.grow(i, members, alpha, s.max_members)
                grown.append(gate.names[i])
                continue
        name = _next_name(gate)
        gate.add_members(name, members[-s.max_members:], alpha)
        new.append(name)
    if new or grown:
        buffer.keep(gate.classify(buffer.embeddings)[0] < 0)
    return new, sorted(set(grown))


def _next_name(gate: Gate) -> str:
    numbers = [int(n.split("-")[1]) for n in gate.names if n.startswith("novel-") and n.split("-")[1].isdigit()]
    return f"novel-{max(numbers, default=0) + 1}"


def snapshot(gate: Gate, version: int) -> ClassUpdate:
    return ClassUpdate(version, tuple(gate.names), gate.centroids, gate.radii, gate.sizes, gate.set_ids)


def run(stage: StageProcess) -> int:
    s, g = stage.settings.cluster, stage.settings.gate
    inbox = Inbox(stage.socket(zmq.PULL, "unseen", bind=True), "cluster", (UnseenBatch, EndOfStream))
    publish = stage.socket(zmq.PUB, "classes", bind=True)
    gate = load_memory(g.memory, g.set_size)
    buffer = UnseenBuffer(s.buffer_size)
    version, new_rows, last_run = 0, 0, time.monotonic()
    stage.started(classes=len(gate))

    def cluster_now() -> None:
        nonlocal version, new_rows, last_run
        new, grown = discover(gate, buffer, s, g.alpha)
        new_rows, last_run = 0, time.monotonic()
        if new or grown:
            version += 1
            send(publish, snapshot(gate, version))
            for type_, names in (("class_discovered", new), ("class_updated", grown)):
                for name in names:
                    i = gate.names.index(name)
                    stage.emit(type_, **{"class": name}, size=int(gate.sizes[i]), radius=float(gate.radii[i]),
                               set=int(gate.set_ids[i]), buffered=len(buffer))
            if g.memory:
                save_gate(gate, g.memory)

    while True:
        msg = inbox.recv(200)
        if isinstance(msg, EndOfStream):
            cluster_now()
            break
        if msg is not None:
            buffer.add(msg)
            new_rows += len(msg)
        if new_rows >= s.min_new and time.monotonic() - last_run >= s.period_s:
            cluster_now()
    if g.memory:
        save_gate(gate, g.memory)
    stage.emit("stage_stopped", classes=len(gate), buffered=len(buffer), rejected=inbox.rejected)
    send(stage.events, msg)  # the end of stream, after our last event: the sink closes the log on it
    return 0
