"""Cluster stage (SKZC's KCH, label-free): buffers unseen embeddings, periodically turns dense groups into classes."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import zmq

from models.kch import count_groups, deduplicate, knn_components
from models.sddc import Gate, save_gate
from stages.classes import handle
from stages.config import ClusterSettings
from stages.gate import load_memory
from stages.process import StageProcess
from stream.messages import ClassUpdate, EndOfStream, UnseenBatch
from stream.sockets import Inbox, send


@dataclass
class UnseenBuffer:
    """The newest `capacity` unseen embeddings, the track each came from and its thumbnail.

    A track keeps at most `per_track` rows (0 = no limit), and a new row of a track joins only if it
    differs from that track's kept rows (cosine below `similar`): one object crossing the scene is a
    few representative views, not hundreds of frames."""
    capacity: int
    per_track: int = 0
    similar: float = 1.0
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (M, D)
    tracks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))            # (M,)
    thumbs: np.ndarray | None = None                                                     # (M, T, T, 3) uint8

    def add(self, batch: UnseenBatch) -> None:
        if len(self.embeddings) == 0:
            self.embeddings = np.zeros((0, batch.embeddings.shape[1]), np.float32)
            self.thumbs = None if batch.thumbs is None else batch.thumbs[:0]
        if batch.embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"unseen embeddings of dim {batch.embeddings.shape[1]}, buffer holds "
                             f"{self.embeddings.shape[1]}")
        for i in range(len(batch)):
            self._add_row(batch.embeddings[i], int(batch.track[i]), None if batch.thumbs is None else batch.thumbs[i])
        overflow = len(self.embeddings) - self.capacity
        if overflow > 0:
            self.keep(np.arange(len(self.embeddings)) >= overflow)

    def _add_row(self, x: np.ndarray, track: int, thumb: np.ndarray | None) -> None:
        if track >= 0 and self.per_track:
            mine = np.flatnonzero(self.tracks == track)
            if len(mine) and float((self.embeddings[mine] @ x).max()) >= self.similar:
                return  # a view of this track we already have
            if len(mine) >= self.per_track:
                self.keep(np.arange(len(self.embeddings)) != mine[0])  # replace the track's oldest view
        self.embeddings = np.vstack([self.embeddings, x[None]])
        self.tracks = np.append(self.tracks, track)
        if self.thumbs is not None and thumb is not None:
            self.thumbs = np.concatenate([self.thumbs, thumb[None]])
        else:
            self.thumbs = None

    def keep(self, mask: np.ndarray) -> None:
        self.embeddings, self.tracks = self.embeddings[mask], self.tracks[mask]
        if self.thumbs is not None:
            self.thumbs = self.thumbs[mask]

    def __len__(self) -> int:
        return len(self.embeddings)


def discover(gate: Gate, buffer: UnseenBuffer, s: ClusterSettings, alpha: float,
             examples: dict[str, np.ndarray] | None = None) -> tuple[list[str], list[str]]:
    """Clusters the buffer together with a few anchor members of every known class. A component
    with at least `min_size` buffer rows from `min_tracks` tracks grows the class whose anchors it
    contains (the most of them), or becomes a new class when it reaches no class: an unseen group
    joins a class only when it is density-connected to it, never because centroids happen to be
    near. Rows that then belong to a class leave the buffer. Returns (new names, grown names);
    `examples`, if given, receives each such class's member thumbnails."""
    if len(buffer) == 0:
        return [], []
    buffer.keep(gate.classify(buffer.embeddings)[0] < 0)  # rows a class discovered since now covers
    keep = deduplicate(buffer.embeddings, s.dedup_similarity)
    anchors, owners = class_anchors(gate, s.anchors, buffer.embeddings.shape[1])
    comp = knn_components(np.vstack([buffer.embeddings[keep], anchors]), s.k, s.min_similarity)
    comp_rows, comp_anchors = comp[:len(keep)], comp[len(keep):]
    known = list(gate.names)
    new, grown = [], []
    for c in np.unique(comp_rows):
        rows = keep[comp_rows == c]
        if len(rows) < s.min_size or count_groups(buffer.tracks[rows]) < s.min_tracks:
            continue
        members, reached = buffer.embeddings[rows], owners[comp_anchors == c]
        if len(reached):
            name = known[int(np.bincount(reached).argmax())]
            gate.grow(gate.names.index(name), members, alpha, s.max_members)
            grown.append(name)
        else:
            name = _next_name(gate)
            gate.add_members(name, members[-s.max_members:], alpha)
            new.append(name)
        if examples is not None and buffer.thumbs is not None:
            examples[name] = buffer.thumbs[rows]
    if new or grown:
        buffer.keep(gate.classify(buffer.embeddings)[0] < 0)
    return new, sorted(set(grown))


def class_anchors(gate: Gate, per_class: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The newest `per_class` member embeddings of each class (its centroid when members are
    unknown) and the class index of each: (A, D), (A,). per_class 0: no anchors, nothing ever grows."""
    parts = [m[max(len(m) - per_class, 0):] if len(m) else gate.centroids[i:i + per_class]
             for i, m in enumerate(gate.members)] if per_class > 0 else []
    if not parts:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    owners = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)])
    return np.vstack(parts).astype(np.float32), owners


def _next_name(gate: Gate) -> str:
    numbers = [int(n.split("-")[1]) for n in gate.names if n.startswith("novel-") and n.split("-")[1].isdigit()]
    return f"novel-{max(numbers, default=0) + 1}"


def save_examples(folder: Path, thumbs: np.ndarray, limit: int) -> None:
    """Up to `limit` example crops per class folder (numbered PNGs); a person looks at them to name the class."""
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.png")))
    for i, thumb in enumerate(thumbs[:max(limit - have, 0)]):
        cv2.imwrite(str(folder / f"{have + i:03d}.png"), thumb)


def snapshot(gate: Gate, version: int) -> ClassUpdate:
    return ClassUpdate(version, tuple(gate.names), gate.centroids, gate.radii, gate.sizes, gate.set_ids)


def run(stage: StageProcess) -> int:
    s, g = stage.settings.cluster, stage.settings.gate
    inbox = Inbox(stage.socket(zmq.PULL, "unseen", bind=True), "cluster", (UnseenBatch, EndOfStream))
    publish = stage.socket(zmq.PUB, "classes", bind=True)
    control = stage.socket(zmq.REP, "control", bind=True)
    gate = load_memory(g.memory, g.set_size)
    buffer = UnseenBuffer(s.buffer_size, s.per_track, s.dedup_similarity)
    crops_dir = Path(s.crops_dir) if s.crops_dir else Path(g.memory + ".crops") if g.memory else None
    version, new_rows, last_run = 0, 0, time.monotonic()
    poller = zmq.Poller()
    poller.register(inbox.sock, zmq.POLLIN)
    poller.register(control, zmq.POLLIN)
    stage.started(classes=len(gate))

    def changed() -> None:
        """The class memory changed: the gate and the memory file follow."""
        nonlocal version
        version += 1
        send(publish, snapshot(gate, version))
        if g.memory:
            save_gate(gate, g.memory)

    def cluster_now() -> None:
        nonlocal new_rows, last_run
        examples: dict[str, np.ndarray] = {}
        new, grown = discover(gate, buffer, s, g.alpha, examples)
        new_rows, last_run = 0, time.monotonic()
        if new or grown:
            changed()
            for type_, names in (("class_discovered", new), ("class_updated", grown)):
                for name in names:
                    i = gate.names.index(name)
                    stage.emit(type_, **{"class": name}, size=int(gate.sizes[i]), radius=float(gate.radii[i]),
                               set=int(gate.set_ids[i]), buffered=len(buffer))
            if crops_dir is not None:
                for name, thumbs in examples.items():
                    save_examples(crops_dir / name, thumbs, s.examples)

    msg = None
    while not isinstance(msg, EndOfStream):
        ready = dict(poller.poll(200))
        if control in ready:  # rename / merge / delete / list from `run_pipeline.py classes`
            reply, event = handle(control.recv(), gate, g.alpha, s.max_members, crops_dir)
            control.send_json(reply)
            if event is not None:
                changed()
                stage.emit(event.pop("type"), **event)
        msg = inbox.recv(0) if inbox.sock in ready else None
        if isinstance(msg, UnseenBatch):
            buffer.add(msg)
            new_rows += len(msg)
        if isinstance(msg, EndOfStream) or (new_rows >= s.min_new and time.monotonic() - last_run >= s.period_s):
            cluster_now()
    if g.memory:
        save_gate(gate, g.memory)
    stage.emit("stage_stopped", classes=len(gate), buffered=len(buffer), rejected=inbox.rejected)
    send(stage.events, msg)  # the end of stream, after our last event: the sink closes the log on it
    return 0
