"""Track ids across frames (ByteTrack from the `trackers` package) and per-track label voting."""
from __future__ import annotations

from collections import Counter, deque

import numpy as np

from models.sddc import UNSEEN


class BoxTracker:
    """ByteTrack over one source's boxes; returns a track id per input box, in input order (-1 until
    a track is confirmed)."""

    def __init__(self, frame_rate: float = 25.0, lost_track_buffer: int = 30, activation: float = 0.5,
                 min_frames: int = 2, min_iou: float = 0.1, high_conf: float = 0.5):
        from trackers import ByteTrackTracker

        self._tracker = ByteTrackTracker(lost_track_buffer=lost_track_buffer, frame_rate=frame_rate,
                                         track_activation_threshold=activation,
                                         minimum_consecutive_frames=min_frames, minimum_iou_threshold=min_iou,
                                         high_conf_det_threshold=high_conf)

    def update(self, xyxy: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """xyxy: (N, 4) pixels, scores: (N,) -> track ids (N,) int64."""
        import supervision as sv

        n = len(xyxy)
        dets = sv.Detections(xyxy=np.asarray(xyxy, np.float32).reshape(n, 4),
                             confidence=np.asarray(scores, np.float32), data={"row": np.arange(n)})
        out = self._tracker.update(dets)  # may reorder and drop boxes: map back by row
        ids = np.full(n, -1, np.int64)
        if len(out):
            ids[out.data["row"]] = out.tracker_id
        return ids


class LabelVotes:
    """A box's shown label is its track's majority label over the last `window` decisions, once the
    track has `min_votes` of them and the majority holds `min_share`; otherwise the frame's own
    decision. Stops labels flickering between classes from frame to frame."""

    def __init__(self, window: int = 15, min_votes: int = 3, min_share: float = 0.6, max_tracks: int = 10000):
        self.window, self.min_votes, self.min_share, self.max_tracks = window, min_votes, min_share, max_tracks
        self._history: dict[int, deque[str]] = {}

    def vote(self, tracks: np.ndarray, labels: list[str]) -> list[str]:
        out = []
        for track, label in zip(tracks.tolist(), labels):
            if track < 0:
                out.append(label)
                continue
            history = self._history.setdefault(track, deque(maxlen=self.window))
            history.append(label)
            winner, count = Counter(history).most_common(1)[0]
            enough = len(history) >= self.min_votes and count / len(history) >= self.min_share
            out.append(winner if enough else label)
        while len(self._history) > self.max_tracks:  # forget the oldest tracks
            self._history.pop(next(iter(self._history)))
        return out

    def forget_except(self, names: set[str]) -> None:
        """Drops votes for labels that are no longer classes (renamed, merged, deleted)."""
        for track, history in self._history.items():
            kept = [label for label in history if label in names or label == UNSEEN]
            if len(kept) != len(history):
                self._history[track] = deque(kept, maxlen=self.window)
