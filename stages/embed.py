"""Embed stage: crops every detected box and embeds the crops of several frames in one batch."""
from __future__ import annotations

import numpy as np
import zmq

from models.detections import Embedder
from models.registry import EMBEDDERS
from stages.process import StageProcess, limit_threads
from stream.messages import EndOfStream, FrameDetections, FrameEmbeddings


def crop(image: np.ndarray, xyxy: np.ndarray) -> list[np.ndarray]:
    """Box crops (views), boxes rounded outward and clipped to the image; at least 1x1."""
    h, w = image.shape[:2]
    out = []
    for x1, y1, x2, y2 in xyxy:
        x1, y1 = min(max(int(np.floor(x1)), 0), w - 1), min(max(int(np.floor(y1)), 0), h - 1)
        x2, y2 = max(min(int(np.ceil(x2)), w), x1 + 1), max(min(int(np.ceil(y2)), h), y1 + 1)
        out.append(image[y1:y2, x1:x2])
    return out


def embed(model: Embedder, msgs: list[FrameDetections]) -> list[FrameEmbeddings]:
    crops = [c for m in msgs for c in crop(m.image, m.xyxy)]
    vectors = model.embed(crops) if crops else np.zeros((0, model.dim), np.float32)
    out, start = [], 0
    for m in msgs:
        out.append(FrameEmbeddings(m.source, m.index, m.ts, m.image, m.xyxy, m.scores, m.det_labels,
                                   vectors[start:start + len(m)]))
        start += len(m)
    return out


def run(stage: StageProcess) -> int:
    s = stage.settings.embed
    limit_threads(s.threads)
    model = EMBEDDERS.create(s.model, weights=s.weights, device=s.device, **s.options)
    hwm = 1 if stage.live else None  # live: see detect
    inbox = stage.inbox(stage.socket(zmq.PULL, "detections", bind=False, hwm=hwm), "embed",
                        (FrameDetections, EndOfStream))
    out = stage.socket(zmq.PUSH, "embeddings", bind=True, hwm=hwm)
    stage.started(model=s.model, dim=model.dim)
    frames = stage.relay_batches(inbox, out, s.batch_frames, 0 if stage.live else s.batch_timeout_ms,
                                 lambda batch: embed(model, batch))
    stage.emit("stage_stopped", frames=frames, rejected=inbox.rejected)
    return 0
