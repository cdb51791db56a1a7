"""Embed stage: crops every detected box and embeds the crops of several frames in one batch."""
from __future__ import annotations

import numpy as np

from models.boxes import crop
from models.compiled import build_embedder
from models.detections import Embedder
from stages.process import StageProcess, limit_threads
from stream.messages import EndOfStream, FrameDetections, FrameEmbeddings


def embed(model: Embedder, msgs: list[FrameDetections]) -> list[FrameEmbeddings]:
    crops = [c for m in msgs for c in crop(m.image, m.xyxy)]
    vectors = model.embed(crops) if crops else np.zeros((0, model.dim), np.float32)
    out, start = [], 0
    for m in msgs:
        out.append(FrameEmbeddings(m.frame, m.xyxy, m.scores, m.det_labels,
                                   vectors[start:start + len(m)], origins=m.origins))
        start += len(m)
    return out


def run(stage: StageProcess) -> int:
    s = stage.settings.embed
    limit_threads(s.threads)
    model = build_embedder(s.model, s.runtime, s.threads, weights=s.weights, device=s.device, **s.options)
    model.embed([np.zeros((64, 32, 3), np.uint8)])  # the slow first call before joining the pool (see detect)
    hwm = 1 if stage.live else None  # live: see detect
    inbox = stage.inbox(stage.socket("to_embed", hwm=hwm), "embed",
                        (FrameDetections, EndOfStream))
    out = stage.socket("embeddings", hwm=hwm)
    stage.started(model=s.model, dim=model.dim, runtime=model.runtime)
    frames = stage.relay_batches(inbox, out, s.batch_frames, 0 if stage.live else s.batch_timeout_ms,
                                 lambda batch: embed(model, batch))
    stage.emit("stage_stopped", frames=frames, rejected=inbox.rejected)
    return 0
