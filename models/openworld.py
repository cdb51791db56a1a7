"""What the gate keeps of class-agnostic boxes and what of them feeds clustering: a proposal stays when its
embedding is seen as a class (SKZC's updated box predictor), a motion box when its track is old, steady and
has moved; fragments, flickers and ghosts are dropped, and only steady views of unseen tracks are clustered."""
from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np

DETECTOR, PROPOSAL, MOTION = "detector", "proposal", "motion"
STEADY_IOU = 0.6    # a track's box is steady in a frame when it overlaps its previous box at least this much
STEADY_AREA = 0.75  # ... and its area is within this ratio of the previous box's
FRAGMENT = 0.7      # a proposal or motion box this much inside a larger kept box is a part of it
PATCH = 16          # side of the grey image of a track's first place, area-averaged (sensor noise averages out)
MOVED = 16.0        # grey levels: a track has moved once a tenth of that image changed by at least this much


class TrackAges:
    """Frames each track id has been seen in, and for how many frames in a row its box kept its place and
    size (bounded: the oldest tracks are forgotten first)."""

    def __init__(self, max_tracks: int = 10000):
        self.max_tracks = max_tracks
        self._age: OrderedDict[int, int] = OrderedDict()
        self._box: dict[int, tuple[np.ndarray, int]] = {}  # track -> (last box, steady frames in a row)
        self._first: dict[int, tuple[np.ndarray, np.ndarray | None, bool]] = {}  # track -> (first box, its image, moved)

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
            t = self._age.popitem(last=False)[0]
            self._box.pop(t, None)
            self._first.pop(t, None)
        return age, steady

    def moved(self, tracks: np.ndarray, xyxy: np.ndarray, image: np.ndarray, which: np.ndarray) -> np.ndarray:
        """(N,) bool: for the boxes `which` (motion regions), whether their track has moved: the place where it
        began (its first box) no longer looks as it did then, in this frame or an earlier one. A background
        subtractor also calls foreground the *ghost* of something that was there while it learnt the
        background and has left (vtest.avi: walkers of its first frames, for 200 frames), and light
        changing on a wall; such a region stays where it began and shows only background, which never
        changes. Compared: the PATCH x PATCH grey image (area means) of the first box, then and now; moved
        when its 90th percentile change is at least MOVED grey levels (the open-world benchmark's objects
        18+ after 5 frames, vtest's ghosts at most 14 over their lives: docs/open-world.md, sixth session).
        Other boxes, and boxes on no track: False."""
        tracks = np.asarray(tracks).reshape(-1)
        out = np.zeros(len(tracks), bool)
        for i in np.flatnonzero(np.asarray(which, bool) & (tracks >= 0)):
            t = int(tracks[i])
            if t not in self._first:
                box = np.array(xyxy[i], np.float32)  # a copy: the caller's array may change
                self._first[t] = (box, _patch(image, box), False)
                continue
            box, then, done = self._first[t]
            if not done and then is not None:
                now = _patch(image, box)
                done = now is not None and float(np.percentile(np.abs(now - then), 90)) >= MOVED
                self._first[t] = (box, then, done)
            out[i] = done
        return out


def _patch(image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The PATCH x PATCH grey image (area means, float32) of an image's box; None when under 2 px a side."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = np.round(np.clip(box, 0, [w, h, w, h])).astype(int)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    small = cv2.resize(image[y0:y1, x0:x1], (PATCH, PATCH), interpolation=cv2.INTER_AREA).astype(np.float32)
    return small.mean(axis=2) if small.ndim == 3 else small


def _steady(a: np.ndarray, b: np.ndarray) -> bool:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    area_a, area_b = float(np.prod(a[2:] - a[:2])), float(np.prod(b[2:] - b[:2]))
    iou = inter / max(area_a + area_b - inter, 1e-9)
    return iou >= STEADY_IOU and min(area_a, area_b) >= STEADY_AREA * max(area_a, area_b)


def explained(origins: tuple[str, ...], seen: np.ndarray, ages: np.ndarray, persist: int,
              steady: np.ndarray | None = None, min_steady: int = 0, moved: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: the boxes the gate keeps. Detector boxes always. A track is settled when it is at least
    `persist` frames old and its box has been steady for `min_steady` frames in a row. Motion boxes only
    on a settled track that has `moved` (`TrackAges.moved`: not a ghost), seen as a class or not (a
    foreground blob flickers whatever it looks like);
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
    if moved is not None:  # `settled` only ever decides motion boxes
        settled &= np.asarray(moved, bool)
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
