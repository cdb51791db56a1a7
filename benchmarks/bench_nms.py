#!/usr/bin/env python3
"""Duplicate boxes (one object logged twice in a frame, e.g. as car and as truck) without and with class-agnostic NMS.

    python benchmarks/bench_nms.py [--source VIDEO] [--frames N] [--iou 0.7] [--log EVENTS.jsonl ...]

Runs the configured detector's step (stages/detect.py) over the same frames with detect.nms_iou = 1 (off,
the detector's own per-class NMS only) and at --iou; with --log, counts the same in existing event logs.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from models.registry import DETECTORS
from stages.config import load
from stages.detect import detect
from stream.messages import Frame

ROOT = Path(__file__).resolve().parents[1]

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def read_frames(path: str, n: int) -> list[Frame]:
    cap, frames = cv2.VideoCapture(path), []
    while len(frames) < n and (got := cap.read())[0]:
        frames.append(Frame(path, len(frames), 0.0, got[1]))
    cap.release()
    return frames


def duplicates(xyxy: np.ndarray, same: float = 0.9) -> int:
    """Pairs of boxes of one frame with IoU >= `same` (the same object twice)."""
    if len(xyxy) < 2:
        return 0
    a = np.asarray(xyxy, np.float64)
    lt, rb = np.maximum(a[:, None, :2], a[None, :, :2]), np.minimum(a[:, None, 2:], a[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = (a[:, 2:] - a[:, :2]).prod(axis=1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)
    return int(np.triu(iou >= same, k=1).sum())


def report(name: str, per_frame: list[np.ndarray]) -> None:
    pairs = [duplicates(b) for b in per_frame]
    boxes = sum(len(b) for b in per_frame)
    print(f"{name:<28} frames {len(per_frame):5d}  boxes {boxes:6d}  frames with a duplicate "
          f"{sum(p > 0 for p in pairs):4d}  duplicate records {sum(pairs):5d} ({100 * sum(pairs) / max(boxes, 1):.1f} %)")


def from_log(path: str) -> list[np.ndarray]:
    boxes = defaultdict(list)
    for line in open(path):
        rec = json.loads(line)
        if rec.get("type") == "detection":
            boxes[(rec["source"], rec["frame"])].append(rec["bbox"])
    return [np.array(b) for b in boxes.values()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=VTEST)
    p.add_argument("--frames", type=int, default=795)
    p.add_argument("--iou", type=float, default=None, help="default: the config's detect.nms_iou")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--log", nargs="*", default=[], help="event logs to count duplicates in instead")
    args = p.parse_args()
    for path in args.log:
        report(Path(path).name, from_log(path))
    if args.log:
        return
    d = load(args.config).detect
    model = DETECTORS.create(d.model, weights=d.weights, device=d.device, **d.options)
    frames = read_frames(args.source, args.frames)
    for name, iou in (("per-class NMS only", 1.0), (f"+ class-agnostic NMS {args.iou or d.nms_iou}", args.iou or d.nms_iou)):
        out = []
        for i in range(0, len(frames), d.batch_size):
            out += [fd.xyxy for fd in detect(model, frames[i:i + d.batch_size], d.score_threshold, d.min_box, iou)]
        report(name, out)


if __name__ == "__main__":
    main()
