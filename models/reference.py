"""Crop-space acceptance of class-search windows: a window found for class c is vouched for when its crop's
nearest neighbours among the classes' own boxes and a background reference (crops of hard background
windows) are mostly members of c (kNN, as SKZC classifies)."""
from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np

from models.proposals import agnostic_nms, box_iou
from models.search import ClassSearch, DenseMap, window_features

BACKGROUND = None  # the background reference's label among the neighbours


class Reference:
    """Per class the newest `members` crop embeddings of boxes the gate holds as that class, and the newest
    `background` crop embeddings of windows on no box (`hard_negatives`); unit vectors as the embedder's
    output normalized, so the gate's centring (`space`) is applied when judging, with the centre of then."""

    def __init__(self, members: int = 64, background: int = 256, k: int = 1):
        self.size, self.k = members, k
        self.members: dict[str, deque] = {}
        self.background: deque = deque(maxlen=background)

    def learn(self, x: np.ndarray, names: list[str | None]) -> None:
        """x (N, D) unit crop embeddings of a frame's boxes, each with its class or None (not a class)."""
        for v, name in zip(np.asarray(x, np.float32), names):
            if name is not None:
                self.members.setdefault(name, deque(maxlen=self.size)).append(v)

    def add_background(self, x: np.ndarray) -> None:
        self.background.extend(np.asarray(x, np.float32))

    def forget_except(self, names: set[str]) -> None:
        for name in [n for n in self.members if n not in names]:
            del self.members[name]

    def vouch(self, x: np.ndarray, names: list[str], space: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """x (M, D) unit crop embeddings of windows, each found for the class in `names` -> (M,) bool: more than
        half of its k nearest (cosine in `space`, the gate's) among every class's members and the background
        are members of that class. Nothing is vouched for before the background has k windows."""
        x = np.asarray(x, np.float32)
        ref = [(n, v) for n, vs in self.members.items() for v in vs] + [(BACKGROUND, v) for v in self.background]
        if not len(x) or len(self.background) < self.k or not ref:
            return np.zeros(len(x), bool)
        labels = np.array([n for n, _ in ref], object)
        sim = space(x) @ space(np.stack([v for _, v in ref])).T  # (M, R)
        k = min(self.k, sim.shape[1])
        near = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        return np.array([(labels[row] == name).sum() * 2 > k for row, name in zip(near, names)], bool)


def hard_negatives(finder: ClassSearch, dense: DenseMap, boxes: np.ndarray, classes: list[str], avoid: np.ndarray,
                   n: int = 4, iou: float = 0.3) -> np.ndarray:
    """(≤ n, 4) windows of the frame `dense` was made from to learn as background: per class of `classes` (the
    classes that learnt from this frame), windows of its shapes on no box of the frame and on none of `avoid`
    (IoU < `iou` with each; `avoid` = the windows the search proposes on this frame, so a window is never
    judged and learnt on the same frame), those the map scores highest for the class first (background that
    looks like it), taken in turn over the classes."""
    taken = np.vstack([np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(avoid, np.float32).reshape(-1, 4)])
    per_class = []
    for name in classes:
        if name not in finder.protos:
            continue
        centre = np.mean(np.stack(finder.protos[name]), axis=0)
        win, feats = window_features(dense.table, dense.stride, dense.frame_hw, finder.shapes(name))
        score = feats @ (centre / max(np.linalg.norm(centre), 1e-12)).astype(np.float32)
        if len(taken) and len(win):
            free = box_iou(win, taken).max(axis=1) < iou
            win, score = win[free], score[free]
        top = np.argsort(-score, kind="stable")[:max(n * 20, 64)]
        per_class.append(win[top][agnostic_nms(win[top], score[top], iou)[:n]])
    if not per_class:
        return np.zeros((0, 4), np.float32)
    order = [c[i] for i in range(n) for c in per_class if i < len(c)]  # each class's best, then second best, ...
    out = []
    for box in order:
        if len(out) == n:
            break
        if not out or box_iou(box[None], np.stack(out)).max() < iou:
            out.append(box)
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 4), np.float32)
