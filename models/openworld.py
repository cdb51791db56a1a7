"""What the gate keeps of class-agnostic boxes and what of them feeds clustering: a proposal stays when its
embedding is seen as a class (SKZC's updated box predictor), a motion box when its track is old and steady;
fragments and flickers are dropped, and only steady views of unseen tracks are clustered."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

DETECTOR, PROPOSAL, MOTION = "detector", "proposal", "motion"
STEADY_IOU = 0.6    # a track's box is steady in a frame when it overlaps its previous box at least this much
STEADY_AREA = 0.75  # ... and its area is within this ratio of the previous box's
FRAGMENT = 0.7      # a proposal or motion box this much inside a larger kept box is a part of it


class TrackAges:
    """Frames each track id has been seen in, and for how many frames in a row its box kept its place and
    size (bounded: the oldest tracks are forgotten first)."""

    def __init__(self, max_tracks: int = 10000):
        self.max_tracks = max_tracks
        self._age: OrderedDict[int, int] = OrderedDict()
        self._box: dict[int, tuple[np.ndarray, int]] = {}  # track -> (last box, steady frames in a row)

    def update(self, tracks: np.ndarray) -> np.ndarray:
        """tracks (N,) ids of one frame, -1 none -> each box's track age in frames after this one (0: no track)."""
        return self.observe(tracks)[0]

    def observe(self, tracks: np.ndarray, xyxy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """tracks (N,), xyxy (N, 4) of one frame -> (ages, steady): each box's track age in frames, and the
        frames in a row (this one included) its track's box stayed steady (0: no track, or no boxes given)."""
        tracks = np.asarray(tracks).reshape(-1)
        age, steady = np.zeros(len(tracks), np.int64), np.zeros(len(tracks), np.int64)
        for i, t in enumerate(tracks.tolist()):
            if t < 0:
                continue
            self._age[t] = self._age.pop(t, 0) + 1
            age[i] = self._age[t]
            if xyxy is not None:
                box = np.asarray(xyxy[i], np.float32)
                prev, run = self._box.get(t, (None, 0))
                run = run + 1 if prev is not None and _steady(prev, box) else 1
                self._box[t] = (box, run)
                steady[i] = run
        while len(self._age) > self.max_tracks:
            self._box.pop(self._age.popitem(last=False)[0], None)
        return age, steady


def _steady(a: np.ndarray, b: np.ndarray) -> bool:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    area_a, area_b = float(np.prod(a[2:] - a[:2])), float(np.prod(b[2:] - b[:2]))
    iou = inter / max(area_a + area_b - inter, 1e-9)
    return iou >= STEADY_IOU and min(area_a, area_b) >= STEADY_AREA * max(area_a, area_b)


def explained(origins: tuple[str, ...], seen: np.ndarray, ages: np.ndarray, persist: int,
              steady: np.ndarray | None = None, min_steady: int = 0) -> np.ndarray:
    """(N,) bool: the boxes the gate keeps. Detector boxes always. A track is settled when it is at least
    `persist` frames old and its box has been steady for `min_steady` frames in a row. Motion boxes only
    on a settled track, seen as a class or not (a foreground blob flickers whatever it looks like);
    low-score proposals only when seen as a class (SKZC's updated box predictor). An unseen low-score
    proposal is a guess even on a settled track: ByteTrack lets one continue a track a motion box
    started, and on the open-world benchmark those were 0.9 false boxes a frame on background once the
    objects stopped, and fed clustering background rows (docs/open-world.md, third round)."""
    n = len(seen)
    detector = np.array([o == DETECTOR for o in origins], bool).reshape(n)
    motion = np.array([o == MOTION for o in origins], bool).reshape(n)
    settled = np.asarray(ages) >= persist
    if steady is not None:
        settled &= np.asarray(steady) >= min_steady
    return detector | (settled & motion) | (np.asarray(seen, bool) & ~motion)


def fragments(xyxy: np.ndarray, origins: tuple[str, ...], keep: np.ndarray) -> np.ndarray:
    """(N,) bool: proposal and motion boxes lying mostly (FRAGMENT) inside a larger kept detector or motion
    box of the frame: a part of an object (a leg, the ghost half of a motion region) is not an object of
    its own. A low-score proposal is a guess and never makes another box a fragment."""
    area, inter = _overlaps(xyxy)
    if len(area) < 2:
        return np.zeros(len(area), bool)
    inside = inter / np.maximum(area[:, None], 1e-9)  # [i, j]: share of i in j
    guess = np.array([o == PROPOSAL for o in origins], bool)
    outer = (np.asarray(keep, bool) & ~guess)[None, :] & (area[None, :] > area[:, None])
    np.fill_diagonal(outer, False)
    detector = np.array([o == DETECTOR for o in origins], bool)
    return ~detector & ((inside >= FRAGMENT) & outer).any(axis=1)


def loose(xyxy: np.ndarray, origins: tuple[str, ...], keep: np.ndarray) -> np.ndarray:
    """(N,) bool: low-score proposals holding most (FRAGMENT) of a smaller kept detector or motion box of
    the frame: the detector's guess around an object another box already fits (or a group of them and
    the ground between). A motion region fits a moving object closely, a low-score box rarely does."""
    area, inter = _overlaps(xyxy)
    if len(area) < 2:
        return np.zeros(len(area), bool)
    inside = inter / np.maximum(area[None, :], 1e-9)  # [i, j]: share of j in i
    guess = np.array([o == PROPOSAL for o in origins], bool)
    inner = (np.asarray(keep, bool) & ~guess)[None, :] & (area[None, :] < area[:, None])
    return guess & ((inside >= FRAGMENT) & inner).any(axis=1)


def _overlaps(xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """xyxy (N, 4) -> each box's area (N,) and the intersection area of every pair (N, N)."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    area = np.prod(np.clip(xyxy[:, 2:] - xyxy[:, :2], 0, None), axis=1)
    lt, rb = np.maximum(xyxy[:, None, :2], xyxy[None, :, :2]), np.minimum(xyxy[:, None, 2:], xyxy[None, :, 2:])
    return area, np.prod(np.clip(rb - lt, 0, None), axis=2)


def feeds(origins: tuple[str, ...], steady: np.ndarray, min_steady: int) -> np.ndarray:
    """(N,) bool: boxes whose view may feed clustering (when kept, unseen and tracked): detector boxes as
    before; proposal and motion boxes only from a track steady for `min_steady` frames in a row, so the
    rows of a new class are whole objects, not fragments and half-ghosts that change from frame to frame."""
    detector = np.array([o == DETECTOR for o in origins], bool).reshape(len(steady))
    return detector | (np.asarray(steady) >= min_steady)
