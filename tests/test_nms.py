"""Class-agnostic NMS: one object is one box, with the detector's best class (on vtest.avi: no car-and-truck pairs)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.detections import Detections
from models.nms import suppress
from stages.config import load
from stages.detect import detect
from stream.messages import Frame


def dets(boxes, scores, ids) -> Detections:
    return Detections(np.float32(boxes).reshape(-1, 4), np.float32(scores), np.int64(ids))


@pytest.mark.parametrize("det, iou, kept", [
    (Detections.empty(), 0.7, []),
    (dets([[10, 10, 50, 90]], [0.8], [2]), 0.7, [(2, 0.8)]),
    (dets([[10, 10, 50, 90], [10, 10, 50, 90]], [0.6, 0.5], [2, 7]), 0.7, [(2, 0.6)]),   # car and truck: car stays
    (dets([[10, 10, 50, 90], [11, 10, 50, 91]], [0.4, 0.9], [2, 7]), 0.7, [(7, 0.9)]),   # the better score wins
    (dets([[10, 10, 50, 90], [40, 10, 80, 90]], [0.6, 0.5], [0, 0]), 0.7, [(0, 0.6), (0, 0.5)]),  # two people side by side
    (dets([[10, 10, 50, 90], [10, 10, 50, 90]], [0.6, 0.5], [2, 7]), 1.0, [(2, 0.6), (7, 0.5)]),  # 1 = off
])
def test_suppress_keeps_one_box_per_object_with_its_best_class(det, iou, kept):
    out = suppress(det, iou)
    assert [(int(c), round(float(s), 2)) for c, s in zip(out.class_ids, out.scores)] == kept


def duplicate_frames(results) -> int:
    """Frames holding two boxes with IoU >= 0.9."""
    count = 0
    for fd in results:
        a = fd.xyxy.astype(np.float64)
        lt, rb = np.maximum(a[:, None, :2], a[None, :, :2]), np.minimum(a[:, None, 2:], a[None, :, 2:])
        inter = np.clip(rb - lt, 0, None).prod(axis=2)
        area = (a[:, 2:] - a[:, :2]).prod(axis=1)
        iou = inter / (area[:, None] + area[None, :] - inter)
        count += bool(np.triu(iou >= 0.9, k=1).any())
    return count


def test_vtest_frames_hold_no_box_twice(vtest_video, one_thread):
    from models.registry import DETECTORS
    d = load(None).detect
    model = DETECTORS.create(d.model, weights=d.weights, device=d.device, **d.options)
    cap = cv2.VideoCapture(str(vtest_video))
    frames = [Frame("vtest", i, 0.0, cap.read()[1]) for i in range(8)]
    cap.release()
    before = detect(model, frames, d.score_threshold, d.min_box, 1.0)
    after = detect(model, frames, d.score_threshold, d.min_box, d.nms_iou)
    assert duplicate_frames(before) >= 4  # the detector's own per-class NMS leaves car AND truck on one van
    assert duplicate_frames(after) == 0
    assert {"car", "truck"} & {name for fd in after for name in fd.det_labels}
