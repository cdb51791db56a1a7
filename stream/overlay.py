"""Draws a labelled frame with supervision's annotators: boxes coloured by class id, labels that neither
overlap nor leave the frame, a HUD and a legend of classes with counts; several sources as a mosaic of tiles."""
from __future__ import annotations

import cv2
import numpy as np
import supervision as sv

from stream.messages import LabeledFrame

# Fixed palette indexed by class id, chosen greedily from Kelly's and Tableau's colours so that each next
# colour is the farthest (CIELAB) from all before it: neighbouring ids never look alike, every colour
# is saturated (never the unseen grey). Ids beyond its length cycle.
PALETTE = tuple(sv.Color.from_hex("#" + h) for h in (
    "7FFF00", "4169E1", "FF4500", "00CED1", "FF1493", "F3C300",
    "8B4513", "2CA02C", "E68FAC", "BE0032", "1F77B4", "00FF7F"))
UNSEEN = sv.Color(150, 150, 150)  # grey, and drawn as corners on a thin box: an unseen box never looks like a class
FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(class_id: int) -> sv.Color:
    return PALETTE[class_id % len(PALETTE)]


def luminance(c: sv.Color) -> float:
    """WCAG relative luminance in [0, 1]."""
    ch = np.array([c.r, c.g, c.b]) / 255.0
    ch = np.where(ch <= 0.03928, ch / 12.92, ((ch + 0.055) / 1.055) ** 2.4)
    return float(ch @ [0.2126, 0.7152, 0.0722])


def contrast(a: sv.Color, b: sv.Color) -> float:
    """WCAG contrast ratio, 1 (none) to 21 (black on white)."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def ink(fill: sv.Color) -> sv.Color:
    """Black or white text, whichever reads better on `fill` (always a contrast of at least 4.5)."""
    return sv.Color.BLACK if contrast(fill, sv.Color.BLACK) >= contrast(fill, sv.Color.WHITE) else sv.Color.WHITE


class ClassBook:
    """Class name -> colour id, in order of first appearance; a renamed class keeps its id (and colour),
    ids of deleted or merged classes are not reused within a run."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.next = 0

    def __len__(self) -> int:
        return len(self.ids)

    def id(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name], self.next = self.next, self.next + 1
        return self.ids[name]

    def rename(self, old: str, new: str) -> None:
        self.ids[new] = self.ids.pop(old) if old in self.ids else self.id(new)

    def remove(self, name: str) -> None:
        self.ids.pop(name, None)


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inclusive pixel rectangles [x1, y1, x2, y2] (as cv2 fills them): does a (4,) touch each of b (M, 4)?"""
    return (a[0] <= b[:, 2]) & (b[:, 0] <= a[2]) & (a[1] <= b[:, 3]) & (b[:, 1] <= a[3])


def place_labels(boxes: np.ndarray, sizes: np.ndarray, frame_wh: tuple[int, int],
                 blocked: np.ndarray | None = None) -> np.ndarray:
    """Where each label goes, in order (earlier boxes get the better places): (N, 4) int inclusive pixel
    rectangles, entirely inside the frame, touching neither each other nor a `blocked` (M, 4) rectangle;
    a row of -1 where no such place exists (the box stays drawn, unlabelled). sizes: (N, 2) label w, h.
    Tried in turn: above the box, inside its top, below it, inside its bottom (left-aligned, then
    right-aligned), each shifted into the frame, then further up and down in half-label steps."""
    w_frame, h_frame = frame_wh
    taken = [np.asarray(blocked if blocked is not None else [], np.int64).reshape(-1, 4)]
    out = np.full((len(boxes), 4), -1, np.int64)
    for i, ((x1, y1, x2, y2), (w, h)) in enumerate(zip(np.asarray(boxes).round().astype(np.int64), sizes)):
        w, h = int(w), int(h)
        if w > w_frame or h > h_frame:
            continue
        held = np.concatenate(taken)
        for x, y in _candidates(x1, y1, x2, y2, w, h, h_frame):
            x, y = min(max(int(x), 0), w_frame - w), min(max(int(y), 0), h_frame - h)
            rect = np.array([x, y, x + w - 1, y + h - 1])
            if not boxes_overlap(rect, held).any():
                out[i] = rect
                taken.append(rect[None])
                break
    return out


def _candidates(x1: int, y1: int, x2: int, y2: int, w: int, h: int, h_frame: int):
    """Top-left corners to try for a w x h label of box (x1, y1, x2, y2), best first."""
    for x in (x1, x2 - w + 1):
        for y in (y1 - h - 1, y1, y2 + 1, y2 - h + 1):
            yield x, y
    step = h // 2 + 1
    for k in range(1, h_frame // step + 1):
        yield x1, y1 - h - 1 - k * step
        yield x1, y1 - h - 1 + k * step


class Overlay:
    """The annotators and text style for frames of one size; draw() is called per frame."""

    def __init__(self, frame_wh: tuple[int, int]):
        self.wh = frame_wh
        self.scale = max(0.4, min(frame_wh) / 1000)
        self.pad, self.line = max(2, round(6 * self.scale)), round(40 * self.scale)
        fills = [*PALETTE, UNSEEN]
        self.boxes = sv.BoxAnnotator(color=sv.ColorPalette(list(PALETTE)), thickness=2)
        self.unseen = sv.BoxAnnotator(color=UNSEEN, thickness=1)
        self.corners = sv.BoxCornerAnnotator(color=UNSEEN, thickness=3, corner_length=8)
        self.labels = sv.LabelAnnotator(color=sv.ColorPalette(fills), text_color=sv.ColorPalette([ink(c) for c in fills]),
                                        text_scale=self.scale, text_thickness=1, text_padding=self.pad,
                                        text_position=sv.Position.CENTER)

    def label_size(self, text: str) -> tuple[int, int, int]:
        """Pixels a label covers, as supervision draws it centred on an integer point: width, height of
        its fill, and height reserved below the fill (descenders of the text run past the padding)."""
        (tw, th), below = cv2.getTextSize(text, FONT, self.scale, 1)
        w, h = tw + 2 * self.pad, th + 2 * self.pad
        return 2 * (w // 2) + 1, 2 * (h // 2) + 1, max(below - self.pad, 0)

    def panel(self, image: np.ndarray, lines: list[tuple[str, sv.Color | None]], right: bool) -> np.ndarray:
        """Lines of white text on a darkened rectangle in a top corner (one pass of text: no ghost),
        each with an optional colour swatch; returns the panel's inclusive rectangle."""
        swatch = self.line // 2 if any(c is not None for _, c in lines) else 0
        width = max(cv2.getTextSize(t, FONT, self.scale, 1)[0][0] for t, _ in lines) + swatch + 3 * self.pad
        height = len(lines) * self.line + self.pad
        x0 = image.shape[1] - width - 4 if right else 4
        x0, width, height = max(x0, 0), min(width, image.shape[1]), min(height, image.shape[0] - 4)
        roi = image[4:4 + height, x0:x0 + width]
        roi[:] = roi // 4  # a quarter of the scene shows through
        for k, (text, color) in enumerate(lines):
            base = 4 + (k + 1) * self.line - self.line // 3
            if color is not None:
                cv2.rectangle(image, (x0 + self.pad, base - swatch), (x0 + self.pad + swatch, base), color.as_bgr(), -1)
            cv2.putText(image, text, (x0 + self.pad + swatch + (self.pad if swatch else 0), base), FONT, self.scale,
                        (255, 255, 255), 1, cv2.LINE_AA)
        return np.array([x0, 4, x0 + width - 1, 4 + height - 1])

    def draw(self, msg: LabeledFrame, book: ClassBook, hud: list[str], legend_rows: int = 12) -> np.ndarray:
        """A copy of the frame: every box (class colour; unseen: grey corners), its label, the HUD lines top
        left and the legend (every known class with its boxes in this frame, and unseen) top right. Seen
        labels missing from `book` are added to it."""
        image = msg.image.copy()
        ids = np.array([book.id(name) if seen else -1 for name, seen in zip(msg.labels, msg.seen)], np.int64)
        seen = ids >= 0
        det = sv.Detections(xyxy=msg.xyxy.astype(np.float32), confidence=msg.scores, class_id=ids)
        if seen.any():
            self.boxes.annotate(image, det[seen], custom_color_lookup=ids[seen] % len(PALETTE))
        if (~seen).any():
            self.unseen.annotate(image, det[~seen])
            self.corners.annotate(image, det[~seen])
        counts = {name: int(sum(1 for label, s in zip(msg.labels, msg.seen) if s and label == name)) for name in book.ids}
        rows = [(f"{name}  {counts[name]}", class_color(i)) for name, i in sorted(book.ids.items(), key=lambda kv: kv[1])]
        if len(rows) > legend_rows:
            rows = rows[:legend_rows - 1] + [(f"+{len(rows) - legend_rows + 1} more", None)]
        blocked = [self.panel(image, [(line, None) for line in hud], right=False)]
        blocked.append(self.panel(image, rows + [(f"unseen  {int((~seen).sum())}", UNSEEN)], right=True))
        texts = [f"{label} ({d})" if s else f"unseen ({d})" for label, s, d in zip(msg.labels, msg.seen, msg.det_labels)]
        order = np.lexsort((-msg.scores, ~seen))  # seen boxes first, then by score: they get the better places
        sizes = np.array([self.label_size(t) for t in texts], np.int64).reshape(-1, 3)
        placed = np.full((len(msg), 4), -1, np.int64)
        placed[order] = place_labels(msg.xyxy[order], sizes[order, :2] + [[0, 1]] * sizes[order, 2:], self.wh,
                                     np.stack(blocked))
        ok = placed[:, 0] >= 0
        if ok.any():  # supervision centres a label on the box it is given: give it the fill's own rectangle
            placed[:, 3] = placed[:, 1] + sizes[:, 1] - 1
            rects = sv.Detections(xyxy=placed[ok].astype(np.float32))
            lookup = np.where(seen, ids % len(PALETTE), len(PALETTE))[ok]
            self.labels.annotate(image, rects, labels=[t for t, k in zip(texts, ok) if k], custom_color_lookup=lookup)
        return image


def grid(n: int) -> tuple[int, int]:
    """(columns, rows) for n tiles: as square as possible, wider than tall (2 -> 2x1, 3 -> 2x2, 5 -> 3x2)."""
    cols = max(1, int(np.ceil(np.sqrt(n))))
    return cols, max(1, -(-n // cols))


def cell_size(first_wh: tuple[int, int], n: int, screen_wh: tuple[int, int] = (1920, 1080)) -> tuple[int, int]:
    """One tile's size: the first frame's, shrunk (aspect kept) until the whole mosaic fits screen_wh."""
    cols, rows = grid(n)
    scale = min(1.0, screen_wh[0] / (cols * first_wh[0]), screen_wh[1] / (rows * first_wh[1]))
    return max(16, int(first_wh[0] * scale)), max(16, int(first_wh[1] * scale))


def mosaic(tiles: list[np.ndarray | None], notes: list[str], cell_wh: tuple[int, int]) -> np.ndarray:
    """The tiles in reading order on a dark grid, each scaled (aspect kept) and centred in its cell with a
    1-pixel grey rule between cells; a missing tile (no frame yet) shows its note instead."""
    cols, rows = grid(len(tiles))
    w, h = cell_wh
    out = np.full((rows * h, cols * w, 3), 32, np.uint8)
    for k, (tile, text) in enumerate(zip(tiles, notes)):
        x0, y0 = (k % cols) * w, (k // cols) * h
        if tile is None:
            scale = max(0.4, min(w, h) / 1000)
            (tw, th), _ = cv2.getTextSize(text, FONT, scale, 1)
            cell = out[y0:y0 + h, x0:x0 + w].copy()  # drawn in its cell: a long note is cut at the cell's edge
            cv2.putText(cell, text, (max((w - tw) // 2, 4), (h + th) // 2), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
            out[y0:y0 + h, x0:x0 + w] = cell
        else:
            f = min(w / tile.shape[1], h / tile.shape[0])
            tw, th = max(1, round(tile.shape[1] * f)), max(1, round(tile.shape[0] * f))
            small = tile if (tw, th) == (tile.shape[1], tile.shape[0]) else \
                cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
            ox, oy = x0 + (w - tw) // 2, y0 + (h - th) // 2
            out[oy:oy + th, ox:ox + tw] = small
    out[:, w:cols * w:w] = 128
    out[h:rows * h:h, :] = 128
    return out
