"""Detect stage: batches Frames, runs the configured detector, pushes FrameDetections."""
from __future__ import annotations

import numpy as np

from models.detections import Detector
from models.registry import DETECTORS
from stages.process import StageProcess, limit_threads
from stream.messages import EndOfStream, Frame, FrameDetections


def detect(model: Detector, frames: list[Frame], score_threshold: float, min_box: int) -> list[FrameDetections]:
    """One detector call for the whole batch; boxes below the score or size limits are dropped."""
    results = model.detect([f.image for f in frames]) if frames else []
    out = []
    for frame, det in zip(frames, results):
        wh = det.xyxy[:, 2:] - det.xyxy[:, :2]
        det = det[(det.scores >= score_threshold) & (wh.min(axis=1, initial=np.inf) >= min_box)]
        out.append(FrameDetections(frame.source, frame.index, frame.ts, frame.image, det.xyxy, det.scores,
                                   tuple(model.class_names[c] for c in det.class_ids)))
    return out


class Freshest:
    """Live: of the frames waiting, only the newest is worth the detector's time; the older ones are
    dropped and reported (frame_dropped with stage detect), as capture reports the ones it replaces."""

    def __init__(self, stage: StageProcess):
        self.stage, self.total = stage, 0

    def __call__(self, batch: list[Frame]) -> list[Frame]:
        if len(batch) <= 1:
            return batch
        newest = max(batch, key=lambda f: f.index)
        stale = sorted(f.index for f in batch if f is not newest)
        self.total += len(stale)
        self.stage.stats.inc("dropped_frames", len(stale), newest.source)
        self.stage.emit("frame_dropped", source=newest.source, frames=stale, count=len(stale), total=self.total)
        return [newest]


def run(stage: StageProcess) -> int:
    s = stage.settings.detect
    limit_threads(s.threads)
    model = DETECTORS.create(s.model, weights=s.weights, device=s.device, **s.options)
    # The first call is slow (lazy set-up, seconds on a busy CPU): made before joining the pool, so the
    # frames dealt to this worker do not keep the gate waiting while its siblings go on.
    model.detect([np.zeros((320, 320, 3), np.uint8)])
    # Live: queues of one and batches of only what is already waiting, so the freshest frame goes through.
    hwm = 1 if stage.live else None
    inbox = stage.inbox(stage.socket("frames", hwm=hwm), "detect", (Frame, EndOfStream))
    out = stage.socket("detections", hwm=hwm)
    stage.started(model=s.model, batch_size=s.batch_size)
    fresh = Freshest(stage) if stage.live else (lambda batch: batch)
    frames = stage.relay_batches(inbox, out, s.batch_size, 0 if stage.live else s.batch_timeout_ms,
                                 lambda batch: detect(model, fresh(batch), s.score_threshold, s.min_box))
    stage.emit("stage_stopped", frames=frames, rejected=inbox.rejected)
    return 0

