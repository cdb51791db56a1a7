"""What the gate keeps of class-agnostic boxes: a proposal or motion box stays when its embedding is seen as a
class (SKZC's updated box predictor) or, unseen, when its track persists; anything else is a flicker, dropped."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

DETECTOR = "detector"


class TrackAges:
    """Frames each track id has been seen in (bounded: the oldest tracks are forgotten first)."""

    def __init__(self, max_tracks: int = 10000):
        self.max_tracks = max_tracks
        self._age: OrderedDict[int, int] = OrderedDict()

    def update(self, tracks: np.ndarray) -> np.ndarray:
        """tracks (N,) ids of one frame, -1 none -> each box's track age in frames after this one (0: no track)."""
        out = np.zeros(len(tracks), np.int64)
        for i, t in enumerate(np.asarray(tracks).tolist()):
            if t < 0:
                continue
            self._age[t] = self._age.pop(t, 0) + 1
            out[i] = self._age[t]
        while len(self._age) > self.max_tracks:
            self._age.popitem(last=False)
        return out


def explained(origins: tuple[str, ...], seen: np.ndarray, ages: np.ndarray, persist: int) -> np.ndarray:
    """(N,) bool: the boxes the gate keeps. Detector boxes always; proposals and motion boxes when seen as
    a class, or unseen on a track at least `persist` frames old."""
    detector = np.array([o == DETECTOR for o in origins], bool).reshape(len(seen))
    return detector | np.asarray(seen, bool) | (np.asarray(ages) >= persist)
