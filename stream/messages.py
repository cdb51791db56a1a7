"""The message types stages exchange: one frozen dataclass each, numpy columns for per-box data."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


def _strings(values) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class Frame:
    """One captured image. `index` counts frames read from the source, so dropped frames leave gaps."""
    source: str
    index: int
    ts: float          # capture time, seconds since the epoch
    image: np.ndarray  # (H, W, 3) uint8, BGR

    def __post_init__(self):
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")


@dataclass(frozen=True)
class _Boxes(Frame):
    """A frame plus per-box columns; len() is the number of boxes and a boolean mask selects boxes."""
    columns: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        super().__post_init__()
        n = len(getattr(self, self.columns[0]))
        for name in self.columns:
            value = getattr(self, name)
            if isinstance(value, list):  # tuples of strings travel as JSON lists
                object.__setattr__(self, name, _strings(value))
            if len(getattr(self, name)) != n:
                raise ValueError(f"{type(self).__name__}.{name} has {len(value)} rows, expected {n}")

    def __len__(self) -> int:
        return len(getattr(self, self.columns[0]))

    def __getitem__(self, mask) -> "_Boxes":
        """Boxes selected by a boolean mask or an index array; the frame fields are kept."""
        index = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, np.int64)
        picked = {}
        for name in self.columns:
            value = getattr(self, name)
            picked[name] = tuple(value[i] for i in index) if isinstance(value, tuple) else value[index]
        return dataclasses.replace(self, **picked)


@dataclass(frozen=True)
class FrameDetections(_Boxes):
    xyxy: np.ndarray       # (N, 4) float32, absolute pixels
    scores: np.ndarray     # (N,) float32
    det_labels: tuple[str, ...]  # (N,) the detector's class name of each box
    columns: ClassVar[tuple[str, ...]] = ("xyxy", "scores", "det_labels")

    @classmethod
    def empty(cls, frame: Frame) -> "FrameDetections":
        return cls(frame.source, frame.index, frame.ts, frame.image,
                   np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())


@dataclass(frozen=True)
class FrameEmbeddings(FrameDetections):
    embeddings: np.ndarray  # (N, D) float32, one row per box
    columns: ClassVar[tuple[str, ...]] = FrameDetections.columns + ("embeddings",)


@dataclass(frozen=True)
class LabeledFrame(FrameDetections):
    """What the box labeler decided for every box of a frame."""
    labels: tuple[str, ...]  # (N,) class name when seen, "unseen" otherwise
    seen: np.ndarray         # (N,) bool
    distance: np.ndarray     # (N,) float32, distance to the nearest class centroid (inf if no class)
    track: np.ndarray        # (N,) int64, track id, -1 where none
    columns: ClassVar[tuple[str, ...]] = FrameDetections.columns + ("labels", "seen", "distance", "track")


@dataclass(frozen=True)
class UnseenBatch:
    """Embeddings of boxes the gate called unseen, on their way to the clustering buffer."""
    source: str
    index: int               # frame they came from
    embeddings: np.ndarray   # (N, D) float32
    track: np.ndarray        # (N,) int64, -1 where none
    thumbs: np.ndarray | None = None  # (N, T, T, 3) uint8 BGR crops, letterboxed, for class examples

    def __post_init__(self):
        n = len(self.embeddings)
        if self.embeddings.ndim != 2 or self.track.shape != (n,):
            raise ValueError(f"embeddings {self.embeddings.shape} and track {self.track.shape} disagree")
        if self.thumbs is not None and (self.thumbs.ndim != 4 or len(self.thumbs) != n):
            raise ValueError(f"thumbs {self.thumbs.shape} do not match {n} embeddings")

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclass(frozen=True)
class ClassUpdate:
    """The complete set of discovered classes (a snapshot, so a late or lost update heals itself)."""
    version: int
    names: tuple[str, ...]   # (K,)
    centroids: np.ndarray    # (K, D) float32
    radii: np.ndarray        # (K,) float32
    sizes: np.ndarray        # (K,) int64, member count
    set_ids: np.ndarray      # (K,) int64, embedding set each class belongs to

    def __post_init__(self):
        if isinstance(self.names, list):
            object.__setattr__(self, "names", _strings(self.names))
        k = len(self.names)
        if self.centroids.ndim != 2 or len(self.centroids) != k or any(
                a.shape != (k,) for a in (self.radii, self.sizes, self.set_ids)):
            raise ValueError(f"ClassUpdate columns disagree on {k} classes")

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Event:
    """A record for the JSONL event log; `record` carries at least "type" and "ts"."""
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.record.get("type"), str) or not isinstance(self.record.get("ts"), (int, float)):
            raise ValueError("an event record needs a string 'type' and a numeric 'ts'")


@dataclass(frozen=True)
class EndOfStream:
    """Sent by capture after its last frame and forwarded by every stage before it exits."""
    source: str
    frames: int         # frames read from the source
    reason: str = "end"  # "end", "stopped" (Ctrl-C, SIGTERM) or "lost" (a live source went silent)


MESSAGE_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    Frame, FrameDetections, FrameEmbeddings, LabeledFrame, UnseenBatch, ClassUpdate, Event, EndOfStream)}
