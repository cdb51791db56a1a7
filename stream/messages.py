"""The message types stages exchange: one frozen dataclass each, numpy columns for per-box data."""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

# Contents are checked on construction, so a message that decodes is one its consumer can use.
SOURCE_MAX = 4096      # characters of a source name (a path or a URL)
LABEL_MAX = 256        # characters of a class name, detector label or end-of-stream reason
SIDE_MAX = 1 << 15     # pixels per image side
COORD_MAX = 1 << 20    # |box coordinate| in pixels: far outside any image, still a small int for drawing
VERSION_MAX = 1 << 53  # class update versions: exact in a JSON number (a double)
DEPTH_MAX = 16         # nesting of an event record
FINITE = sys.float_info.max  # [-FINITE, FINITE]: no NaN, no inf


def _int(owner, name: str, value, low: int = 0, high: int = 1 << 63) -> None:
    if type(value) is not int or not low <= value < high:  # bool is an int; it is not a count
        raise ValueError(f"{type(owner).__name__}.{name} must be an integer in [{low}, {high}), got {repr(value)[:40]}")


def _utf8(value) -> bool:
    """A string that can be written out: JSON's "\\ud800" escape decodes to a lone surrogate, which cannot."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text(owner, name: str, value, limit: int) -> None:
    if not isinstance(value, str) or len(value) > limit or not _utf8(value):
        raise ValueError(f"{type(owner).__name__}.{name} must be a string of at most {limit} characters")


def _strings(owner, name: str, limit: int = LABEL_MAX) -> None:
    """A tuple-of-strings field; JSON brings it as a list."""
    value = getattr(owner, name)
    try:
        joined = "".join(value) if isinstance(value, (list, tuple)) else None  # TypeError unless all are strings
    except TypeError:
        joined = None
    if joined is None or not _utf8(joined) or value and max(map(len, value)) > limit:
        raise ValueError(f"{type(owner).__name__}.{name} must be a list of strings of at most {limit} characters")
    object.__setattr__(owner, name, tuple(value))


def _array(owner, name: str, kinds: str, shape: tuple, low: float | None = None, high: float = math.inf) -> np.ndarray:
    """The field as an array of a dtype kind in `kinds` ('f' float, 'i' int, 'b' bool, 'u' uint) whose
    shape matches `shape` (None = any size); with `low`, every value lies in [low, high] (NaN never does)."""
    value = getattr(owner, name)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds or not _fits(value.shape, shape):
        got = f"{value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{type(owner).__name__}.{name} must be {kinds!r}-kind {list(shape)}, got {got}")
    # min and max as Python numbers (a float32 compared with 1e308 would see inf); NaN fails both tests
    if low is not None and value.size and not (low <= np.minimum.reduce(value, None).item() and (
            high == math.inf or np.maximum.reduce(value, None).item() <= high)):
        wanted = "finite" if (low, high) == (-FINITE, FINITE) else f"in [{low}, {high}] and not NaN"
        raise ValueError(f"{type(owner).__name__}.{name} must be {wanted}")
    return value


def _fits(shape: tuple, pattern: tuple) -> bool:
    if len(shape) != len(pattern):
        return False
    for size, want in zip(shape, pattern):
        if want is not None and size != want:
            return False
    return True


def _time(value) -> bool:
    """A time stamp: a finite float, or an int a float holds exactly (JSON may bring 5 for 5.0)."""
    return isinstance(value, float) and math.isfinite(value) or type(value) is int and abs(value) <= VERSION_MAX


def json_safe(value, depth: int = 0):
    """A JSON-able copy of an event value with NaN and inf as None (JSON has neither)."""
    if depth > DEPTH_MAX:
        raise ValueError(f"an event record nests deeper than {DEPTH_MAX}")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("event record keys must be strings")
        return {k: json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return value


@dataclass(frozen=True)
class Frame:
    """One captured image. `index` counts frames read from the source, so dropped frames leave gaps."""
    source: str
    index: int
    ts: float          # capture time, seconds since the epoch
    image: np.ndarray  # (H, W, 3) uint8, BGR

    def __post_init__(self):
        _text(self, "source", self.source, SOURCE_MAX)
        _int(self, "index", self.index)
        if not _time(self.ts):
            raise ValueError(f"{type(self).__name__}.ts must be a finite number, got {repr(self.ts)[:40]}")
        image = _array(self, "image", "u", (None, None, 3))
        if image.dtype.itemsize != 1 or not (1 <= image.shape[0] <= SIDE_MAX and 1 <= image.shape[1] <= SIDE_MAX):
            raise ValueError(f"image must be (H, W, 3) uint8 with 1 <= H, W <= {SIDE_MAX}, "
                             f"got {image.shape} {image.dtype}")


# Per-box columns: (dtype kinds, trailing shape, lowest and highest value). String columns are tuples of labels.
_COLUMNS = {"xyxy": ("f", (4,), -COORD_MAX, COORD_MAX), "scores": ("f", (), -FINITE, FINITE),
            "embeddings": ("f", (None,), -FINITE, FINITE), "seen": ("b", (), None, None),
            "distance": ("f", (), 0.0, math.inf),  # inf: no class to be near
            "track": ("i", (), -1, math.inf)}      # -1: no track


ORIGINS = ("detector", "proposal", "motion")  # where a box came from (models/proposals.py)


class _Boxes:
    """Per-box columns about one frame, which the message holds (not is): a FrameDetections is no Frame
    and no LabeledFrame is a FrameDetections, so an inbox's isinstance check accepts exactly its types.

    len() is the number of boxes and a boolean mask or index array selects boxes; `source`, `index`,
    `ts` and `image` read through to the frame."""
    frame: Frame
    origins: tuple[str, ...]
    columns: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        if type(self.frame) is not Frame:
            raise ValueError(f"{type(self).__name__}.frame must be a Frame, got {type(self.frame).__name__}")
        labels = self.det_labels
        if isinstance(self.origins, (list, tuple)) and not self.origins and isinstance(labels, (list, tuple)) and labels:
            object.__setattr__(self, "origins", ("detector",) * len(labels))  # () means the detector's boxes
        n = None
        for name in self.columns:
            if name in _COLUMNS:
                kinds, trailing, low, high = _COLUMNS[name]
                rows = len(_array(self, name, kinds, (None,) + trailing, low, high))
            else:
                _strings(self, name)
                rows = len(getattr(self, name))
            n = rows if n is None else n
            if rows != n:
                raise ValueError(f"{type(self).__name__}.{name} has {rows} rows, expected {n}")
        if "embeddings" in self.columns and self.embeddings.shape[1] < 1:
            raise ValueError(f"{type(self).__name__}.embeddings needs a dimension of at least 1")
        if not set(self.origins) <= set(ORIGINS):
            raise ValueError(f"{type(self).__name__}.origins must each be one of {', '.join(ORIGINS)}")

    source = property(lambda self: self.frame.source)
    index = property(lambda self: self.frame.index)
    ts = property(lambda self: self.frame.ts)
    image = property(lambda self: self.frame.image)

    def __len__(self) -> int:
        return len(getattr(self, self.columns[0]))

    def __getitem__(self, mask):
        """Boxes selected by a boolean mask or an index array; the frame is kept."""
        index = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, np.int64)
        picked = {}
        for name in self.columns:
            value = getattr(self, name)
            picked[name] = tuple(value[i] for i in index) if isinstance(value, tuple) else value[index]
        return dataclasses.replace(self, **picked)


# Box messages list their fields in one order (frame, the detector's columns, origins, their own columns),
# which is the order of the flat wire layout they had when they subclassed Frame (stream/wire.py).
@dataclass(frozen=True)
class FrameDetections(_Boxes):
    """The detector's boxes of a frame."""
    frame: Frame
    xyxy: np.ndarray       # (N, 4) float32, absolute pixels
    scores: np.ndarray     # (N,) float32
    det_labels: tuple[str, ...]  # (N,) the detector's class name of each box
    # (N,) each box's origin in ORIGINS; keyword-only, and () means every box is the detector's
    origins: tuple[str, ...] = field(default=(), kw_only=True)
    columns: ClassVar[tuple[str, ...]] = ("xyxy", "scores", "det_labels", "origins")

    @classmethod
    def empty(cls, frame: Frame) -> "FrameDetections":
        return cls(frame, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), ())


@dataclass(frozen=True)
class FrameEmbeddings(_Boxes):
    """A frame's boxes, each with its embedding."""
    frame: Frame
    xyxy: np.ndarray       # (N, 4) float32, absolute pixels
    scores: np.ndarray     # (N,) float32
    det_labels: tuple[str, ...]  # (N,)
    origins: tuple[str, ...] = field(default=(), kw_only=True)  # (N,) as in FrameDetections
    embeddings: np.ndarray  # (N, D) float32, one row per box
    columns: ClassVar[tuple[str, ...]] = FrameDetections.columns + ("embeddings",)


@dataclass(frozen=True)
class LabeledFrame(_Boxes):
    """What the box labeler decided for every box of a frame."""
    frame: Frame
    xyxy: np.ndarray       # (N, 4) float32, absolute pixels
    scores: np.ndarray     # (N,) float32
    det_labels: tuple[str, ...]  # (N,)
    origins: tuple[str, ...] = field(default=(), kw_only=True)  # (N,) as in FrameDetections
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
    thumbs: np.ndarray | None = None  # (N, T, T, 3) uint8 BGR box crops for class examples, each in its
    #                                    slot's top-left corner, as large as thumb_hw says (no padding)
    thumb_hw: np.ndarray | None = None  # (N, 2) int32 height and width of each crop in its slot
    # True: the frame ends a discovery period (file sources: `cluster.period_frames`); the cluster stage runs
    # a round now and publishes the classes, and the gate labels no further frame until they come, so a file
    # run is repeatable. A sender without the field never asks for a round.
    round: bool = False

    def __post_init__(self):
        _text(self, "source", self.source, SOURCE_MAX)
        _int(self, "index", self.index)
        n, d = _array(self, "embeddings", "f", (None, None), -FINITE, FINITE).shape
        _array(self, "track", "i", (n,), -1)
        if d < 1:
            raise ValueError("UnseenBatch needs embeddings (N, D) with D >= 1")
        if type(self.round) is not bool:
            raise ValueError(f"UnseenBatch.round must be true or false, got {repr(self.round)[:40]}")
        if self.thumbs is not None:
            t = _array(self, "thumbs", "u", (n, None, None, 3)).shape[1]
            if self.thumbs.dtype.itemsize != 1 or not 1 <= t <= SIDE_MAX or self.thumbs.shape[2] != t:
                raise ValueError(f"thumbs must be (N, T, T, 3) uint8, got {self.thumbs.shape} {self.thumbs.dtype}")
            if self.thumb_hw is not None:
                _array(self, "thumb_hw", "i", (n, 2), 1, t)
        elif self.thumb_hw is not None:
            raise ValueError("thumb_hw without thumbs")

    def examples(self) -> list[np.ndarray] | None:
        """The example crop of each box at its own size, or None without thumbs."""
        if self.thumbs is None:
            return None
        if self.thumb_hw is None:
            return list(self.thumbs)
        return [self.thumbs[i, :h, :w] for i, (h, w) in enumerate(self.thumb_hw)]

    def __len__(self) -> int:
        return len(self.embeddings)


@dataclass(frozen=True)
class ClassUpdate:
    """The complete set of discovered classes (a snapshot, so a late or lost update heals itself).

    `version` counts the cluster stage's changes, for logs; the gate applies every valid snapshot in
    arrival order, so no version value (a forged 2e18, or 1 from a restarted cluster) can stall it."""
    version: int
    names: tuple[str, ...]   # (K,)
    centroids: np.ndarray    # (K, D) float32
    radii: np.ndarray        # (K,) float32
    sizes: np.ndarray        # (K,) int64, member count
    set_ids: np.ndarray      # (K,) int64, embedding set each class belongs to
    # (D,) float32: the point the gate centres embeddings on before measuring (models.sddc.Gate.center);
    # (0,) = not centred. A sender from before the field omits it and means the same.
    center: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self):
        _int(self, "version", self.version, 0, VERSION_MAX)
        _strings(self, "names")
        k = len(self.names)
        if len(set(self.names)) != k:
            raise ValueError("ClassUpdate.names repeat a class")
        d = _array(self, "centroids", "f", (k, None), -FINITE, FINITE).shape[1]
        _array(self, "radii", "f", (k,), 0.0, FINITE)
        _array(self, "sizes", "i", (k,), 0)
        _array(self, "set_ids", "i", (k,), 0)
        if k and d < 1:
            raise ValueError("ClassUpdate needs centroids of dimension D >= 1")
        c = _array(self, "center", "f", (None,), -FINITE, FINITE)
        if len(c) and len(c) != d:
            raise ValueError(f"ClassUpdate.center has {len(c)} values for centroids of dimension {d}")

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class Event:
    """A record for the JSONL event log; `record` carries at least "type" and "ts".

    NaN and inf become None (JSON has neither); the decoder refuses them outright."""
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        record = self.record
        if not isinstance(record, dict) or not isinstance(record.get("type"), str) or not _time(record.get("ts")):
            raise ValueError("an event record needs a string 'type' and a finite numeric 'ts'")
        object.__setattr__(self, "record", json_safe(record))


@dataclass(frozen=True)
class EndOfStream:
    """Sent by capture after its last frame and forwarded by every stage before it exits."""
    source: str
    frames: int         # frames read from the source
    reason: str = "end"  # "end", "stopped" (Ctrl-C, SIGTERM) or "lost" (a live source went silent)

    def __post_init__(self):
        _text(self, "source", self.source, SOURCE_MAX)
        _int(self, "frames", self.frames)
        _text(self, "reason", self.reason, LABEL_MAX)


MESSAGE_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    Frame, FrameDetections, FrameEmbeddings, LabeledFrame, UnseenBatch, ClassUpdate, Event, EndOfStream)}
