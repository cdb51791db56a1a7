"""Cluster stage (SKZC's KCH, label-free): buffers unseen embeddings, periodically turns dense groups into classes."""
from __future__ import annotations

import time
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
from stream.sockets import send


class UnseenBuffer:
    """The newest `capacity` unseen embeddings, the track each came from and its thumbnail.

    A track keeps at most `per_track` rows (0 = no limit), and a new row of a track joins only if it
    differs from that track's kept rows (cosine below `similar`): one object crossing the scene is a
    few representative views, not hundreds of frames. Rows live in lists (adding is per box, on the
    hot path); the arrays are built when clustering asks for them."""

    def __init__(self, capacity: int, per_track: int = 0, similar: float = 1.0):
        self.capacity, self.per_track, self.similar = capacity, per_track, similar
        self._rows: list[tuple[np.ndarray, int, np.ndarray | None]] = []  # (embedding (D,), track, thumb)
        self._by_track: dict[int, list[np.ndarray]] = {}  # track -> its kept embeddings
        self._arrays = None

    def add(self, batch: UnseenBatch) -> None:
        if self._rows and batch.embeddings.shape[1] != self._rows[0][0].shape[0]:
            raise ValueError(f"unseen embeddings of dim {batch.embeddings.shape[1]}, buffer holds "
                             f"{self._rows[0][0].shape[0]}")
        for i in range(len(batch)):
            self._add_row(batch.embeddings[i], int(batch.track[i]), None if batch.thumbs is None else batch.thumbs[i])
        if len(self._rows) > self.capacity:
            self.keep(np.arange(len(self._rows)) >= len(self._rows) - self.capacity)

    def _add_row(self, x: np.ndarray, track: int, thumb: np.ndarray | None) -> None:
        if track >= 0 and self.per_track:
            mine = self._by_track.setdefault(track, [])
            if mine and float((np.stack(mine) @ x).max()) >= self.similar:
                return  # a view of this track we already have
            if len(mine) >= self.per_track:  # replace the track's oldest view
                oldest = next(i for i, row in enumerate(self._rows) if row[1] == track)
                del self._rows[oldest]
                mine.pop(0)
            mine.append(x)
        self._rows.append((x, track, thumb))
        self._arrays = None

    def keep(self, mask: np.ndarray) -> None:
        self._rows = [row for row, k in zip(self._rows, mask) if k]
        self._by_track = {}
        for x, track, _ in self._rows:
            if track >= 0:
                self._by_track.setdefault(track, []).append(x)
        self._arrays = None

    def _build(self):
        if self._arrays is None:
            dim = self._rows[0][0].shape[0] if self._rows else 0
            thumbs = [t for _, _, t in self._rows]
            self._arrays = (np.stack([x for x, _, _ in self._rows]) if self._rows else np.zeros((0, dim), np.float32),
                            np.array([t for _, t, _ in self._rows], np.int64),
                            np.stack(thumbs) if thumbs and all(t is not None for t in thumbs) else None)
        return self._arrays

    @property
    def embeddings(self) -> np.ndarray:  # (M, D) float32
        return self._build()[0]

    @property
    def tracks(self) -> np.ndarray:  # (M,) int64
        return self._build()[1]

    @property
    def thumbs(self) -> np.ndarray | None:  # (M, T, T, 3) uint8, None unless every row has one
        return self._build()[2]

    def __len__(self) -> int:
        return len(self._rows)


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
    inbox = stage.inbox(stage.socket(zmq.PULL, "unseen", bind=True), "cluster", (UnseenBatch, EndOfStream))
    publish = stage.socket(zmq.PUB, "classes", bind=True)
    control = stage.socket(zmq.REP, "control", bind=True)
    gate = load_memory(g.memory, g.set_size)
    buffer = UnseenBuffer(s.buffer_size, s.per_track, s.dedup_similarity)
    crops_dir = stage.settings.crops_dir
    version, new_rows, last_run = stage.attempt << 32, 0, time.monotonic()  # a restart's updates supersede
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
        if not ready and stage.drained:
            msg = EndOfStream("", 0, "stopped")  # supervised: told to stop and nothing left
        if isinstance(msg, UnseenBatch):
            buffer.add(msg)
            new_rows += len(msg)
        if isinstance(msg, EndOfStream) or (new_rows >= s.min_new and time.monotonic() - last_run >= s.period_s):
            cluster_now()
    if g.memory:
        save_gate(gate, g.memory)
    stage.emit("stage_stopped", classes=len(gate), buffered=len(buffer), rejected=inbox.rejected)
    stage.forward_end(stage.events, msg)  # after our last event: an unsupervised sink closes the log on it
    return 0
