"""The clustering buffer: the newest unseen embeddings, a few diverse views per track."""
from __future__ import annotations

import numpy as np


class UnseenBuffer:
    """The newest `capacity` unseen embeddings with the track each came from, an id and an optional thumbnail.

    A track keeps at most `per_track` views (0 = no limit); a further view replaces the kept view most
    alike the others, so a track is a few diverse views rather than hundreds of near-identical frames."""

    def __init__(self, capacity: int, per_track: int = 3):
        self.capacity, self.per_track = capacity, per_track
        self._rows: dict[int, tuple[np.ndarray, int, np.ndarray | None]] = {}  # id -> (x (D,), track, thumb); insertion order
        self._by_track: dict[int, list[int]] = {}
        self._next = 0
        self._arrays = None

    def add(self, embeddings: np.ndarray, tracks: np.ndarray, thumbs=None) -> np.ndarray:
        """embeddings (M, D) normalized, tracks (M,) (-1 = untracked), thumbs: M images or None.
        Returns (M,) row ids, -1 for a view its track did not keep."""
        if self._rows and embeddings.shape[1:] != next(iter(self._rows.values()))[0].shape:
            raise ValueError(f"unseen embeddings of dim {embeddings.shape[1:]}, buffer holds "
                             f"{next(iter(self._rows.values()))[0].shape}")
        # thumbnails are copied: a view would keep the whole received message alive as long as the row
        ids = np.array([self._add_row(np.asarray(embeddings[i], np.float32), int(tracks[i]),
                                      None if thumbs is None else np.array(thumbs[i])) for i in range(len(embeddings))],
                       np.int64)
        while len(self._rows) > self.capacity:
            self._drop(next(iter(self._rows)))
        self._arrays = None
        return ids

    def _add_row(self, x: np.ndarray, track: int, thumb) -> int:
        rid, self._next = self._next, self._next + 1
        self._rows[rid] = (x, track, thumb)
        if track >= 0 and self.per_track:
            mine = self._by_track.setdefault(track, [])
            mine.append(rid)
            if len(mine) > self.per_track:  # drop the view most alike the others
                views = np.stack([self._rows[i][0] for i in mine])
                sim = views @ views.T
                np.fill_diagonal(sim, -np.inf)
                victim = mine[int(sim.max(axis=1).argmax())]
                self._drop(victim)
                return -1 if victim == rid else rid
        return rid

    def _drop(self, rid: int) -> None:
        _, track, _ = self._rows.pop(rid)
        if track >= 0 and track in self._by_track:
            self._by_track[track].remove(rid)
            if not self._by_track[track]:
                del self._by_track[track]

    def remove(self, ids) -> None:
        for rid in ids:
            if int(rid) in self._rows:
                self._drop(int(rid))
        self._arrays = None

    def _build(self):
        if self._arrays is None:
            rows = list(self._rows.values())
            dim = rows[0][0].shape[0] if rows else 0
            self._arrays = (np.stack([r[0] for r in rows]) if rows else np.zeros((0, dim), np.float32),
                            np.array([r[1] for r in rows], np.int64), np.array(list(self._rows), np.int64))
        return self._arrays

    @property
    def embeddings(self) -> np.ndarray:  # (M, D) float32
        return self._build()[0]

    @property
    def tracks(self) -> np.ndarray:  # (M,) int64
        return self._build()[1]

    @property
    def ids(self) -> np.ndarray:  # (M,) int64
        return self._build()[2]

    def thumbs(self, ids) -> list:
        return [self._rows[int(i)][2] for i in ids if int(i) in self._rows and self._rows[int(i)][2] is not None]

    @property
    def dim(self) -> int | None:
        """Width of the buffered embeddings; None while empty (no arrays are built for it)."""
        return next(iter(self._rows.values()))[0].shape[0] if self._rows else None

    def __len__(self) -> int:
        return len(self._rows)
