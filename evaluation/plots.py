"""Line plots of evaluate.py's sweeps drawn with OpenCV, so the evaluator needs no plotting library."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

COLOURS = ((200, 80, 30), (40, 150, 40), (30, 60, 220), (160, 40, 160), (20, 160, 200))  # BGR
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 440, 60, 20, 60, 50
FONT = cv2.FONT_HERSHEY_SIMPLEX


def line_plot(path: str | Path, x: Sequence[float], series: dict[str, Sequence[float]], xlabel: str,
              title: str, y_range: tuple[float, float] = (0.0, 1.0)) -> None:
    """One PNG with a line and dots per series over x; y from y_range[0] (bottom) to y_range[1] (top)."""
    img = np.full((H, W, 3), 255, np.uint8)
    x = np.asarray(x, np.float64)
    x0, x1 = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1
    y0, y1 = y_range

    def px(xv, yv) -> tuple[int, int]:
        u = LEFT + (xv - x0) / (x1 - x0) * (W - LEFT - RIGHT)
        v = H - BOTTOM - (yv - y0) / (y1 - y0) * (H - TOP - BOTTOM)
        return int(round(u)), int(round(v))

    for t in np.linspace(y0, y1, 6):  # horizontal grid with y labels
        _, v = px(x0, t)
        cv2.line(img, (LEFT, v), (W - RIGHT, v), (225, 225, 225), 1)
        cv2.putText(img, f"{t:.1f}", (8, v + 4), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for t in _ticks(x):
        u, _ = px(t, y0)
        cv2.line(img, (u, H - BOTTOM), (u, H - BOTTOM + 4), (0, 0, 0), 1)
        label = f"{t:g}"
        cv2.putText(img, label, (u - 4 * len(label), H - BOTTOM + 18), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (LEFT, TOP), (W - RIGHT, H - BOTTOM), (0, 0, 0), 1)
    cv2.putText(img, title, (LEFT, 22), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (W // 2 - 4 * len(xlabel), H - 10), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (name, ys) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        pts = np.array([px(a, b) for a, b in zip(x, ys)], np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, tuple(int(c) for c in p), 3, colour, -1, cv2.LINE_AA)
    u = LEFT
    for k, name in enumerate(series):  # legend in one row between title and plot, so it hides no data
        colour = COLOURS[k % len(COLOURS)]
        cv2.line(img, (u, TOP - 16), (u + 25, TOP - 16), colour, 2)
        cv2.putText(img, name, (u + 30, TOP - 12), FONT, 0.45, colour, 1, cv2.LINE_AA)
        u += 45 + 9 * len(name)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write plot {path}; check that the --plots folder is writable")


def _ticks(x: np.ndarray) -> np.ndarray:
    """At most ~11 of the x values, evenly spaced, so labels never overlap."""
    step = max(1, int(np.ceil(len(x) / 11)))
    return x[::step]
