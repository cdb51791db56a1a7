"""Class-agnostic non-maximum suppression: one object is one box, whatever class each duplicate was given."""
from __future__ import annotations

import numpy as np

from models.detections import Detections


def suppress(det: Detections, iou: float) -> Detections:
    """Of boxes overlapping by more than `iou` (intersection over union), only the highest-scoring one
    stays, with its class: a detector's per-class NMS leaves one object as "car" and "truck" on the same
    box. Order of the survivors: by score, highest first. iou >= 1 keeps every box."""
    if len(det) < 2 or iou >= 1.0:
        return det
    import torch  # the detect stage has it loaded already; importers of this module that never suppress do not pay
    from torchvision.ops import nms

    keep = nms(torch.from_numpy(np.ascontiguousarray(det.xyxy, np.float32)),
               torch.from_numpy(np.ascontiguousarray(det.scores, np.float32)), float(iou))
    return det[keep.numpy()]
