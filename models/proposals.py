"""Class-agnostic box proposals: low-score detector boxes under class-agnostic NMS, and motion regions from
background subtraction while global frame registration measures the view as still."""
from __future__ import annotations

import cv2
import numpy as np

DETECTOR, PROPOSAL, MOTION = "detector", "proposal", "motion"
SURE_SHARE = 0.05  # a motion region holding shadow pixels needs this share of sure foreground


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) xyxy -> (N, M) intersection over union."""
    a, b = np.asarray(a, np.float32).reshape(-1, 4), np.asarray(b, np.float32).reshape(-1, 4)
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def covered(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """(N, M): share of each inner box's area lying inside each outer box."""
    inner, outer = np.asarray(inner, np.float32).reshape(-1, 4), np.asarray(outer, np.float32).reshape(-1, 4)
    lt = np.maximum(inner[:, None, :2], outer[None, :, :2])
    rb = np.minimum(inner[:, None, 2:], outer[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    return inter / np.maximum(np.prod(inner[:, 2:] - inner[:, :2], axis=1)[:, None], 1e-9)


def agnostic_nms(xyxy: np.ndarray, rank: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS over all boxes whatever their class, best `rank` first."""
    order, keep = list(np.argsort(-np.asarray(rank, np.float64), kind="stable")), []
    overlap = box_iou(xyxy, xyxy)
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if overlap[i, j] < iou]
    return np.array(keep, np.int64)


def merge(confident: np.ndarray, low: np.ndarray, low_scores: np.ndarray, motion: np.ndarray,
          motion_scores: np.ndarray, iou: float = 0.5, max_proposals: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Which low-score and motion boxes become proposals beside the confident detections.

    A motion region holding most of a confident box is that detection moving, and goes; then one
    class-agnostic NMS ranks confident boxes over motion over low-score ones, so a place gets one box.
    Returns the kept indices into `low` and into `motion`."""
    motion_ok = np.flatnonzero(~(covered(confident, motion) >= 0.5).any(axis=0)) if len(confident) else \
        np.arange(len(motion))
    boxes = np.vstack([confident.reshape(-1, 4), motion[motion_ok].reshape(-1, 4), low.reshape(-1, 4)])
    rank = np.concatenate([np.full(len(confident), 3.0), 2.0 + 0.5 * np.clip(motion_scores[motion_ok], 0, 1),
                           1.0 + 0.5 * np.clip(low_scores, 0, 1)])
    kept = np.sort(agnostic_nms(boxes, rank, iou))
    nc, nm = len(confident), len(motion_ok)
    kept_motion = motion_ok[kept[(kept >= nc) & (kept < nc + nm)] - nc]
    kept_low = kept[kept >= nc + nm] - nc - nm
    kept_low = kept_low[np.argsort(-low_scores[kept_low], kind="stable")][:max_proposals]
    return np.sort(kept_low), kept_motion


class ViewMotion:
    """Measures whether the camera's view moves: the median displacement of corners tracked (Lucas-Kanade)
    between consecutive downscaled frames, robust to objects moving in a still view as long as most corners
    lie on the background. The view counts as still after `settle` frames in a row whose median shift is
    at most `max_shift` px (full frame) with at least half the corners found again; unrelated images (a
    folder of photos) find too few."""

    def __init__(self, max_shift: float = 1.0, settle: int = 5, corners: int = 200):
        self.max_shift, self.settle, self.corners = max_shift, settle, corners
        self.prev: np.ndarray | None = None
        self.still_for = 0
        self.shift, self.found = 0.0, 0.0

    def update(self, small_gray: np.ndarray, scale: float) -> bool:
        """small_gray: uint8 frame at `scale` of full size -> True when the view is still."""
        prev, self.prev = self.prev, small_gray
        if prev is None or prev.shape != small_gray.shape:
            self.still_for = 0
            return False
        points = cv2.goodFeaturesToTrack(prev, self.corners, 0.01, 5)
        if points is None or len(points) < 10:
            self.shift, self.found = float("inf"), 0.0
        else:
            moved, status, _ = cv2.calcOpticalFlowPyrLK(prev, small_gray, points, None)
            ok = status.ravel() == 1
            self.found = float(ok.mean())
            d = (moved - points).reshape(-1, 2)[ok]
            self.shift = float(np.hypot(*np.median(d, axis=0))) / scale if len(d) else float("inf")
        still = self.shift <= self.max_shift and self.found >= 0.5
        self.still_for = self.still_for + 1 if still else 0
        return self.still_for >= self.settle


class MotionProposer:
    """Foreground regions of one source (OpenCV MOG2) as boxes in full-frame pixels. With `shadows`, pixels
    MOG2 calls shadow (a darker copy of the background: also a grey object on a grey road) belong to a
    region that holds some sure foreground (SURE_SHARE); without, only sure foreground counts.

    `history` sets how slowly the background learns after the first `warm` frames: an object that stops
    stays foreground for about history/10 frames (and so does the ghost of one that was there at the start
    and left). mode "auto" proposes only while ViewMotion measures the view as still (a moving
    view restarts the background); "on" always; "off" never."""

    def __init__(self, mode: str = "auto", history: int = 2000, width: int = 320, min_box: int = 12,
                 max_share: float = 0.25, warm: int = 20, shadows: bool = True):
        self.mode, self.history, self.width, self.min_box, self.max_share = mode, history, width, min_box, max_share
        self.warm, self.shadows = warm, shadows
        self.view = ViewMotion()
        self.subtractor = self._new()
        self.frames = 0
        self.kernel_open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self.kernel_close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))

    def _new(self):
        return cv2.createBackgroundSubtractorMOG2(history=self.history, varThreshold=16, detectShadows=True)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image (H, W, 3) BGR -> boxes (N, 4) float32 full-frame pixels, scores (N,) foreground share."""
        none = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        if self.mode == "off":
            return none
        h, w = image.shape[:2]
        scale = min(1.0, self.width / w)
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        still = self.view.update(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), scale)
        if self.mode == "auto" and not still:
            if self.frames:
                self.subtractor, self.frames = self._new(), 0  # the view moved: a new background from here
            return none
        # the first `warm` frames learn fast (MOG2's 1/n), then 1/history: a stopped object fades slowly
        mask = self.subtractor.apply(small, learningRate=-1 if self.frames < self.warm else 1.0 / self.history)
        self.frames += 1
        if self.frames < 10:  # the background is still being learnt
            return none
        sure = cv2.morphologyEx((mask == 255).astype(np.uint8), cv2.MORPH_OPEN, self.kernel_open)
        fg = cv2.morphologyEx((mask > 0).astype(np.uint8), cv2.MORPH_OPEN, self.kernel_open) if self.shadows else sure
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, self.kernel_close)
        count, comp, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        x, y, bw, bh, area = (stats[1:, i] for i in range(5))
        side = self.min_box * scale
        ok = (bw >= side) & (bh >= side) & (bw * bh <= self.max_share * fg.size)
        if self.shadows:  # a region is kept when enough of it is sure foreground: MOG2 calls a grey object
            # darker than the road "shadow", so shadow pixels join a region that holds sure ones; a shadow
            # alone stays out
            strong = np.bincount(comp.ravel(), weights=sure.ravel(), minlength=count)[1:]
            ok &= strong >= np.maximum(SURE_SHARE * area, 1)
        boxes = np.stack([x, y, x + bw, y + bh], axis=1)[ok].astype(np.float32) / scale
        boxes = np.minimum(boxes, np.array([w, h, w, h], np.float32))
        return boxes, (area[ok] / np.maximum(bw[ok] * bh[ok], 1)).astype(np.float32)
