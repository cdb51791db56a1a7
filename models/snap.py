"""Box refinement without a trained regressor: each window is snapped to the object inside it with GrabCut."""
from __future__ import annotations

import cv2
import numpy as np

GROW = 0.5    # the window grown by half its width and height (a quarter a side) before GrabCut (why: `snap`)
MARGIN = 0.25  # around the grown window, a quarter of its size more of the frame: GrabCut's sure background
ITERS = 3
MIN_PIXELS = 16  # a foreground of fewer pixels is no object: the window is kept as it was
SIDE = 160     # GrabCut runs on the region scaled to at most this many pixels a side: its cost stays bounded
#                (a whole-frame region costs ~1 s); a box 1 % off on a large object is still that object's box


def snap_one(image: np.ndarray, box: np.ndarray, grow: float = GROW, iters: int = ITERS) -> np.ndarray:
    """image (H, W, 3) uint8, box (4,) xyxy px -> (4,) float32: the bounding box of the largest connected
    foreground region GrabCut finds in the box grown by `grow`, or the box itself when there is none."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    gw, gh = (x2 - x1) * grow / 2, (y2 - y1) * grow / 2
    x1, y1, x2, y2 = x1 - gw, y1 - gh, x2 + gw, y2 + gh  # the rectangle: everything outside is background
    mw, mh = (x2 - x1) * MARGIN, (y2 - y1) * MARGIN
    X1, Y1 = int(np.clip(x1 - mw, 0, w - 1)), int(np.clip(y1 - mh, 0, h - 1))
    X2, Y2 = int(np.clip(np.ceil(x2 + mw), X1 + 1, w)), int(np.clip(np.ceil(y2 + mh), Y1 + 1, h))
    if Y2 - Y1 < 4 or X2 - X1 < 4:
        return np.asarray(box, np.float32)
    f = min(1.0, SIDE / max(Y2 - Y1, X2 - X1))  # region pixels -> GrabCut pixels
    roi = image[Y1:Y2, X1:X2]
    roi = cv2.resize(roi, (max(4, round(roi.shape[1] * f)), max(4, round(roi.shape[0] * f))),
                     interpolation=cv2.INTER_AREA) if f < 1 else np.ascontiguousarray(roi)
    fx, fy = roi.shape[1] / (X2 - X1), roi.shape[0] / (Y2 - Y1)
    rx, ry = int(np.clip((x1 - X1) * fx, 1, roi.shape[1] - 2)), int(np.clip((y1 - Y1) * fy, 1, roi.shape[0] - 2))
    rw = int(np.clip((x2 - X1) * fx, rx + 1, roi.shape[1] - 1)) - rx
    rh = int(np.clip((y2 - Y1) * fy, ry + 1, roi.shape[0] - 1)) - ry
    try:
        mask = cv2.grabCut(roi, None, (rx, ry, rw, rh), None, None, iters, cv2.GC_INIT_WITH_RECT)[0]
    except cv2.error:  # GrabCut refuses a region of one colour (no background model to fit)
        return np.asarray(box, np.float32)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg)
    if n < 2 or stats[1:, cv2.CC_STAT_AREA].max() < MIN_PIXELS * fx * fy:
        return np.asarray(box, np.float32)
    x, y, bw, bh = stats[1 + int(stats[1:, cv2.CC_STAT_AREA].argmax()), :4]
    return np.array([X1 + x / fx, Y1 + y / fy, X1 + (x + bw) / fx, Y1 + (y + bh) / fy], np.float32)


def snap(image: np.ndarray, xyxy: np.ndarray, grow: float = GROW, iters: int = ITERS) -> np.ndarray:
    """(N, 4) windows -> (N, 4) float32 boxes around the object each holds.

    The class search's windows have a class's typical size at 16-px cells, so they cut into their objects
    or hold a lot of background; a crop of either lies far from the class centroid (docs/box-predictor.md).
    GrabCut (Rother et al. 2004) needs the whole object inside its rectangle: the window is grown first,
    and what the window cut off is then inside. A window on plain background snaps to some texture of it,
    a crop unlike any class, which the gate then drops."""
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    if len(xyxy) == 0:
        return xyxy.copy()
    return np.stack([snap_one(image, b, grow, iters) for b in xyxy])
