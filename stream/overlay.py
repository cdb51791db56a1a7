"""Draws labeled boxes and a HUD (fps, drops, classes) on a frame for the window and the saved video."""
from __future__ import annotations

import functools
import zlib

import cv2
import numpy as np

from stream.messages import LabeledFrame

UNSEEN_COLOR = (160, 160, 160)  # BGR grey


@functools.lru_cache(maxsize=1024)  # called per box per frame
def class_color(name: str) -> tuple[int, int, int]:
    """A stable, saturated BGR colour per class name."""
    hue = zlib.crc32(name.encode()) % 180
    hsv = np.uint8([[[hue, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw(msg: LabeledFrame, hud: list[str]) -> np.ndarray:
    """A copy of the frame with every box (colour by class; grey and thin when unseen), its label
    and the detector's class, and the HUD lines in the top-left corner."""
    image = msg.image.copy()
    for (x1, y1, x2, y2), label, seen, det, dist in zip(msg.xyxy.astype(int), msg.labels, msg.seen,
                                                        msg.det_labels, msg.distance):
        color = class_color(label) if seen else UNSEEN_COLOR
        cv2.rectangle(image, (x1, y1), (x2, y2), color, 2 if seen else 1)
        text = f"{label} ({det})" if seen else f"unseen ({det})"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        ty = max(y1, th + 4)
        cv2.rectangle(image, (x1, ty - th - 4), (x1 + tw + 4, ty), color, -1)
        cv2.putText(image, text, (x1 + 2, ty - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i, line in enumerate(hud):
        y = 20 + 20 * i
        cv2.putText(image, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return image
