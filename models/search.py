"""Class-conditional box search (the updated box predictor): windows of one dense feature map of the whole
frame, ranked by cosine to what each class's boxes look like in that map; the few best are embedded exactly
and judged by the gate like any box."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from models.proposals import PROPOSAL, agnostic_nms, box_iou


@dataclass(frozen=True)
class Windows:
    """Candidate windows of one frame and their cosine to each class centroid."""
    xyxy: np.ndarray    # (P, 4) float32, absolute pixels of the frame
    cosine: np.ndarray  # (P, K) float32, pooled map feature of the window vs class centroid


def integral(fmap: np.ndarray) -> np.ndarray:
    """fmap (C, h, w) -> summed-area table (h + 1, w + 1, C) float64, zero first row and column."""
    c, h, w = fmap.shape
    table = np.zeros((h + 1, w + 1, c), np.float64)
    np.cumsum(np.cumsum(fmap.transpose(1, 2, 0), axis=0), axis=1, out=table[1:, 1:])
    return table


def window_features(table: np.ndarray, stride: float, frame_hw: tuple[int, int],
                    window_shapes: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every shape on the map's grid -> (P, 4) float32 boxes and (P, C) float32 unit vectors:
    each window's map features averaged (as a crop's embedding averages its own map).

    table: `integral` of a (C, h, w) map whose cell (i, j) covers pixels [j*stride, (j+1)*stride) x
    [i*stride, ...); window_shapes: (width, height) pixels, rounded to whole cells (at least one)."""
    h, w, c = table.shape[0] - 1, table.shape[1] - 1, table.shape[2]
    boxes, feats, done = [], [], set()
    H, W = frame_hw
    for ww, hh in window_shapes:
        cw, ch = int(min(max(round(ww / stride), 1), w)), int(min(max(round(hh / stride), 1), h))
        if (cw, ch) in done:
            continue
        done.add((cw, ch))
        pooled = table[ch:, cw:] - table[:-ch, cw:] - table[ch:, :-cw] + table[:-ch, :-cw]  # (h-ch+1, w-cw+1, C)
        pooled = pooled.reshape(-1, c).astype(np.float32)
        feats.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
        ys, xs = np.mgrid[0:h - ch + 1, 0:w - cw + 1]
        x1, y1 = xs.reshape(-1) * stride, ys.reshape(-1) * stride
        boxes.append(np.stack([x1, y1, np.minimum(x1 + cw * stride, W), np.minimum(y1 + ch * stride, H)], 1))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0, c), np.float32)
    return np.concatenate(boxes).astype(np.float32), np.concatenate(feats)


def score_windows(table: np.ndarray, stride: float, frame_hw: tuple[int, int], centroids: np.ndarray,
                  window_shapes: list[tuple[float, float]]) -> Windows:
    """`window_features`' windows, each compared by cosine with each centroid (K, C)."""
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)  # (K, C)
    xyxy, feats = window_features(table, stride, frame_hw, window_shapes)
    return Windows(xyxy, feats @ unit.T.astype(np.float32))


def pool_boxes(table: np.ndarray, stride: float, xyxy: np.ndarray) -> np.ndarray:
    """table: `integral` of a (C, h, w) map with cells of `stride` pixels, boxes (N, 4) pixels -> (N, C) unit
    vectors: each box's map features averaged over the cells it covers (rounded to whole cells, at least one)."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    cells = np.round(np.asarray(xyxy, np.float64).reshape(-1, 4) / stride).astype(np.int64)
    x1, y1 = np.clip(cells[:, 0], 0, w - 1), np.clip(cells[:, 1], 0, h - 1)
    x2, y2 = np.clip(np.maximum(cells[:, 2], x1 + 1), 1, w), np.clip(np.maximum(cells[:, 3], y1 + 1), 1, h)
    pooled = (table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1]).astype(np.float32)  # (N, C)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class DenseMap:
    """One frame's feature map, cells split `grid` x `grid`, and the pixels per (split) cell."""
    fmap: np.ndarray   # (C, h, w) float32
    stride: float      # pixels of the frame per cell
    frame_hw: tuple[int, int]
    table: np.ndarray = field(init=False, repr=False)  # integral(fmap), once per frame for every class and box

    def __post_init__(self):
        object.__setattr__(self, "table", integral(self.fmap))


def dense_map(embedder, image: np.ndarray, scale: float = 1.0, grid: int = 1) -> DenseMap:
    """One pass of the embedder's network over the whole frame (BGR (H, W, 3)) resized by `scale`."""
    h, w = image.shape[:2]
    x = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)),
                                              interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    fmap = embedder.feature_map(x)  # (C, h', w')
    if grid > 1:
        fmap = fmap.repeat(grid, axis=1).repeat(grid, axis=2)
    return DenseMap(fmap, embedder.stride / scale / grid, (h, w))


SHAPE_STEPS = (0.85, 1.0, 1.18)  # each class's typical width and height times these: 9 window shapes


class Background:
    """Decayed running mean and covariance of window features (unit vectors) over frames: the background's
    statistics, label-free (objects are a small share of a frame's windows), and the whitened (LDA)
    direction of a class mean against them (Hariharan, Malik & Ramanan, ECCV 2012)."""

    def __init__(self, decay: float = 0.9, shrink: float = 0.1):
        self.decay, self.shrink = decay, shrink
        self.n, self.s1, self.s2 = 0.0, None, None

    def add(self, feats: np.ndarray) -> None:
        f = np.asarray(feats, np.float64)
        if self.s1 is None:
            self.s1, self.s2 = np.zeros(f.shape[1]), np.zeros((f.shape[1],) * 2)
        self.n = self.decay * self.n + len(f)
        self.s1 = self.decay * self.s1 + f.sum(axis=0)
        self.s2 = self.decay * self.s2 + f.T @ f

    def direction(self, mean: np.ndarray) -> tuple[np.ndarray, float]:
        """(w (C,), bias): w = (Σ + λI)⁻¹ (mean − μ), λ = `shrink` × the mean variance; score = x·w + bias,
        0 at the background's mean."""
        mu = self.s1 / self.n
        cov = self.s2 / self.n - np.outer(mu, mu)
        cov += self.shrink * max(np.trace(cov) / len(mu), 1e-12) * np.eye(len(mu))
        w = np.linalg.solve(cov, np.asarray(mean, np.float64) - mu)
        return w.astype(np.float32), float(-w @ mu)


class ClassSearch:
    """Per class, what its boxes look like in the dense map (their pooled map features, `keep` newest)
    and their sizes; proposes the windows of a frame that look most like each class.

    The prototypes live in the map's own space (a window of the frame, its context included), learnt
    from boxes the gate's classes hold, so ranking compares like with like; the exact crop embedding of
    each proposed window decides afterwards.

    Each class also keeps its frames' background (`Background`, over its own window shapes) and a sample of
    their windows on no box of the frame (negatives). `rank`: windows ranked by cosine to the prototypes'
    mean ("cosine") or by the class's LDA score ("lda"). `accept`: how a window is vouched for — "reach"
    (map cosine no lower than the class's least typical prototype's) or "lda" (its LDA score at least the
    `member_q` quantile of the class's own prototypes' scores and above every negative's) or "none" (the map
    vouches for nothing; the window's crop is judged instead, models/reference.py)."""

    def __init__(self, per_class: int = 4, limit: int = 30, keep: int = 32, iou: float = 0.3,
                 rank: str = "cosine", accept: str = "lda", member_q: float = 0.25, clean: bool = False,
                 shrink: float = 0.1):
        self.per_class, self.limit, self.keep, self.iou = per_class, limit, keep, iou
        self.rank, self.accept, self.member_q, self.clean, self.shrink = rank, accept, member_q, clean, shrink
        self.protos: dict[str, deque] = {}
        self.sizes: dict[str, deque] = {}
        self.background: dict[str, Background] = {}
        self.negatives: dict[str, deque] = {}  # per class, per learnt frame (≤ NEGATIVES, C) windows on no box

    def __len__(self) -> int:
        return len(self.protos)

    def shapes(self, name: str) -> list[tuple[float, float]]:
        w, h = np.median(np.stack(self.sizes[name]), axis=0)
        return [(w * a, h * b) for a in SHAPE_STEPS for b in SHAPE_STEPS]

    def learn(self, dense: DenseMap, xyxy: np.ndarray, names: list[str | None]) -> None:
        """Boxes (N, 4) of the frame `dense` was made from, each with its class name or None (not a class)."""
        rows = [i for i, n in enumerate(names) if n is not None]
        if not rows:
            return
        every = np.asarray(xyxy, np.float32).reshape(-1, 4)
        for i, v, box in zip(rows, pool_boxes(dense.table, dense.stride, every[rows]), every[rows]):
            name = names[i]
            self.protos.setdefault(name, deque(maxlen=self.keep)).append(v)
            self.sizes.setdefault(name, deque(maxlen=self.keep)).append(box[2:] - box[:2])
        if self.rank == "cosine" and self.accept in ("reach", "none"):
            return  # the background is the LDA's alone
        for name in dict.fromkeys(names[i] for i in rows):
            win, feats = window_features(dense.table, dense.stride, dense.frame_hw, self.shapes(name))
            free = box_iou(win, every).max(axis=1, initial=0) < 0.3 if len(win) else np.zeros(0, bool)
            self.background.setdefault(name, Background(shrink=self.shrink)).add(feats[free] if self.clean else feats)
            sample = np.flatnonzero(free)
            sample = sample[np.linspace(0, len(sample) - 1, min(NEGATIVES, len(sample))).astype(int)]
            self.negatives.setdefault(name, deque(maxlen=self.keep)).append(feats[sample])

    def forget_except(self, names: set[str]) -> None:
        for name in [n for n in self.protos if n not in names]:
            del self.protos[name], self.sizes[name]
            self.background.pop(name, None), self.negatives.pop(name, None)

    def propose(self, dense: DenseMap) -> np.ndarray:
        """(M, 4) float32 windows worth embedding: per class the `per_class` best (`rank`, NMS at `iou`) at
        its own sizes; then one NMS over all, at most `limit`."""
        return self.candidates(dense)[0]

    def lda(self, name: str) -> tuple[np.ndarray, float, float, float] | None:
        """The class's LDA direction and bias, its vouching threshold (max of the `member_q` quantile of its
        prototypes' scores and its negatives' highest), and the negatives' spread; None before it has
        `MIN_REACH` prototypes and negatives."""
        protos, negs = self.protos[name], self.negatives.get(name)
        if len(protos) < MIN_REACH or not negs or not sum(len(n) for n in negs):
            return None
        protos, negs = np.stack(protos), np.concatenate(negs)
        w, b = self.background[name].direction(protos.mean(axis=0))
        own, bg = protos @ w + b, negs @ w + b
        return w, b, max(float(np.quantile(own, self.member_q)), float(bg.max())), float(bg.std()) + 1e-12

    def candidates(self, dense: DenseMap) -> tuple[np.ndarray, list[str], np.ndarray]:
        """`propose`'s windows (M, 4), the class each was found for, and whether it is vouched for (M,) bool
        (`accept`)."""
        boxes, rank, names, vouched = [], [], [], []
        for name, protos in self.protos.items():
            centre = np.mean(np.stack(protos), axis=0)  # (C,)
            win, feats = window_features(dense.table, dense.stride, dense.frame_hw, self.shapes(name))
            cosine = feats @ (centre / max(np.linalg.norm(centre), 1e-12)).astype(np.float32)
            model = self.lda(name) if self.rank == "lda" or self.accept == "lda" else None
            lda = feats @ model[0] + model[1] if model else None
            # windows ranked by LDA compare across classes by how far above the class's threshold, in negatives' spreads
            order = (lda - model[2]) / model[3] if model and self.rank == "lda" else cosine
            top = np.argsort(-order, kind="stable")[:max(self.per_class * 20, 64)]
            keep = top[agnostic_nms(win[top], order[top], self.iou)[:self.per_class]]
            boxes.append(win[keep])
            rank.append(order[keep])
            names += [name] * len(keep)
            if self.accept == "lda":
                vouched.append(lda[keep] >= model[2] if model else np.zeros(len(keep), bool))
            elif self.accept == "none":  # the crops decide (models/reference.py)
                vouched.append(np.zeros(len(keep), bool))
            else:
                vouched.append(cosine[keep] >= self.reach(name) - 1e-6)
        if not boxes:
            return np.zeros((0, 4), np.float32), [], np.zeros(0, bool)
        boxes, rank, vouched = np.concatenate(boxes), np.concatenate(rank), np.concatenate(vouched)
        best = agnostic_nms(boxes, rank, 0.7)[:self.limit]
        return boxes[best], [names[i] for i in best], vouched[best]

    def reach(self, name: str) -> float:
        """The lowest cosine of one of the class's own prototypes to their mean: a window at least this like
        the class in the map is as typical of it as every box the class was learnt from (a rank, no new
        threshold); with fewer than `MIN_REACH` prototypes nothing is vouched for (+inf)."""
        protos = np.stack(self.protos[name])
        if len(protos) < MIN_REACH:
            return np.inf
        centre = protos.mean(axis=0)
        return float((protos @ (centre / max(np.linalg.norm(centre), 1e-12))).min())


NEGATIVES = 256  # windows on no box kept per learnt frame and class (evenly spaced over the frame)
MIN_REACH = 4  # prototypes a class needs before its map reach vouches for a window (one box is its own mean)


def vouch(centroids: np.ndarray, space_x: np.ndarray, det_labels: tuple[str, ...], names: list[str],
          index: np.ndarray, origins: tuple[str, ...] | None = None) -> np.ndarray:
    """The gate's side of the search's acceptance: a window the map vouched for as class c (det_label
    `VOUCHED` + c) and left unseen by the radius is seen as c when its crop embedding's nearest class is c
    too: two views of the window (the frame's map, its own crop) agree on the class. Every other box keeps
    the gate's index (the paper's α-radius). space_x: (N, D) the boxes in the gate's space; index (N,).
    det_labels come over the wire: a forged one can at most name the class the crop is nearest anyway, and
    with `origins` (a message's; () means every box is the detector's) only a window (origin proposal, as the
    embed stage sends it) is considered; None: every row is a window (benchmarks, tests)."""
    index = np.asarray(index).copy()
    rows = [i for i, lab in enumerate(det_labels) if lab.startswith(VOUCHED) and index[i] < 0
            and (origins is None or (len(origins) > i and origins[i] == PROPOSAL))]
    if not rows or len(centroids) == 0:
        return index
    nearest = np.linalg.norm(space_x[rows][:, None] - centroids[None], axis=2).argmin(axis=1)
    for i, k in zip(rows, nearest):
        if names[k] == det_labels[i][len(VOUCHED):]:
            index[i] = k
    return index


VOUCHED = "search:"  # det_label prefix of a window the map vouched for; the class name follows


def variants(box: np.ndarray, step: float) -> np.ndarray:
    """(8, 4): the box moved by `step` of its size left, right, up, down, and each side grown or shrunk by it."""
    x1, y1, x2, y2 = box
    dx, dy = step * (x2 - x1), step * (y2 - y1)
    return np.array([[x1 - dx, y1, x2 - dx, y2], [x1 + dx, y1, x2 + dx, y2],
                     [x1, y1 - dy, x2, y2 - dy], [x1, y1 + dy, x2, y2 + dy],
                     [x1 - dx, y1, x2 + dx, y2], [x1 + dx, y1, x2 - dx, y2],
                     [x1, y1 - dy, x2, y2 + dy], [x1, y1 + dy, x2, y2 - dy]], np.float32)


def refine(boxes: np.ndarray, x: np.ndarray, embed, space, centroids: np.ndarray, radii: np.ndarray,
           near: float = 1.25, step: float = 0.12, rounds: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose embedding lies within `near` x the radius of its nearest class are nudged towards that
    class: each round tries `variants` of each and keeps the one nearest the class centroid.

    boxes (M, 4) and x (M, D) their embeddings as the embedder gives them; embed(boxes (P, 4)) -> (P, D)
    likewise; space(x) -> the gate's unit vectors, where centroids (K, D) and radii (K,) live.
    Returns the boxes and their embeddings, refined where it helped."""
    boxes, x = boxes.copy(), x.copy()
    if len(boxes) == 0 or len(centroids) == 0:
        return boxes, x
    dist = np.linalg.norm(space(x)[:, None] - centroids[None], axis=2)  # (M, K)
    cls = dist.argmin(axis=1)
    best = dist[np.arange(len(x)), cls]
    todo = np.flatnonzero(best <= near * radii[cls])
    for _ in range(rounds):
        if len(todo) == 0:
            break
        cand = np.concatenate([variants(boxes[i], step) for i in todo])  # (8 T, 4)
        raw = embed(cand)  # (8 T, D)
        d = np.linalg.norm(space(raw).reshape(len(todo), 8, -1) - centroids[cls[todo]][:, None], axis=2)  # (T, 8)
        j = d.argmin(axis=1)
        better = d[np.arange(len(todo)), j] < best[todo]
        for row, (i, jj, ok) in enumerate(zip(todo, j, better)):
            if ok:
                boxes[i], x[i], best[i] = cand[row * 8 + jj], raw[row * 8 + jj], d[row, jj]
        todo = todo[better]
    return boxes, x
