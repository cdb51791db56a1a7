"""Detect stage: batches Frames, runs the configured detector, pushes FrameDetections."""
from __future__ import annotations

import numpy as np

from models.compiled import build_detector
from models.detections import Detector
from models.nms import suppress
from models.proposals import DETECTOR, MOTION, PROPOSAL, MotionProposer, merge
from stages.process import StageProcess, limit_threads
from stream.messages import EndOfStream, Frame, FrameDetections


def detect(model: Detector, frames: list[Frame], score_threshold: float, min_box: int,
           nms_iou: float = 1.0, proposals=None) -> list[FrameDetections]:
    """One detector call for the whole batch; boxes below the score or size limits are dropped, then
    class-agnostic NMS at `nms_iou` (1 = off) keeps one box per object, with the detector's best class.
    With `proposals` (Proposals), class-agnostic proposals join the confident boxes, each with its origin."""
    results = model.detect([f.image for f in frames]) if frames else []
    out = []
    for frame, det in zip(frames, results):
        wh = det.xyxy[:, 2:] - det.xyxy[:, :2]
        det = det[wh.min(axis=1, initial=np.inf) >= min_box]
        sure = suppress(det[det.scores >= score_threshold], nms_iou)
        names = tuple(model.class_names[c] for c in sure.class_ids)
        if proposals is None:
            out.append(FrameDetections(frame, sure.xyxy, sure.scores, names))
            continue
        low = det[(det.scores < score_threshold) & (det.scores >= proposals.score)]
        motion, motion_scores = proposals.motion(frame)
        li, mi = merge(sure.xyxy, low.xyxy, low.scores, motion, motion_scores, proposals.iou, proposals.limit)
        xyxy = np.vstack([sure.xyxy, motion[mi], low.xyxy[li]]).astype(np.float32)
        scores = np.concatenate([sure.scores, motion_scores[mi], low.scores[li]]).astype(np.float32)
        labels = names + ("object",) * len(mi) + tuple(model.class_names[c] for c in low.class_ids[li])
        origins = (DETECTOR,) * len(sure) + (MOTION,) * len(mi) + (PROPOSAL,) * len(li)
        out.append(FrameDetections(frame, xyxy, scores, labels, origins=origins))
    return out


class Proposals:
    """The detect stage's class-agnostic proposal settings and one motion proposer per source."""

    def __init__(self, score: float, iou: float, limit: int, motion: str, history: int, min_box: int):
        self.score, self.iou, self.limit = score, iou, limit
        self.mode, self.history, self.min_box = motion, history, min_box
        self.sources: dict[str, MotionProposer] = {}

    def motion(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        if frame.source not in self.sources:
            self.sources[frame.source] = MotionProposer(self.mode, self.history, min_box=self.min_box)
        return self.sources[frame.source](frame.image)


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
    model = build_detector(s.model, s.runtime, s.threads, weights=s.weights, device=s.device, **s.options)
    proposals = None
    if s.proposals:
        proposals = Proposals(s.proposal_score, s.proposal_iou, s.max_proposals, s.motion, s.motion_history, s.min_box)
        if getattr(model, "score_threshold", 0.0) > s.proposal_score:
            model.score_threshold = s.proposal_score  # the model's own cut would hide the low-score boxes
    # The first call is slow (lazy set-up, seconds on a busy CPU): made before joining the pool, so the
    # frames dealt to this worker do not keep the gate waiting while its siblings go on.
    model.detect([np.zeros((320, 320, 3), np.uint8)])
    # Live: queues of one and batches of only what is already waiting, so the freshest frame goes through.
    hwm = 1 if stage.live else None
    inbox = stage.inbox(stage.socket("frames", hwm=hwm), "detect", (Frame, EndOfStream))
    out = stage.socket("detections", hwm=hwm)
    stage.started(model=s.model, batch_size=s.batch_size, runtime=model.runtime)
    fresh = Freshest(stage) if stage.live else (lambda batch: batch)
    frames = stage.relay_batches(inbox, out, s.batch_size, 0 if stage.live else s.batch_timeout_ms,
                                 lambda batch: detect(model, fresh(batch), s.score_threshold, s.min_box, s.nms_iou,
                                                      proposals))
    stage.emit("stage_stopped", frames=frames, rejected=inbox.rejected)
    return 0

