#!/usr/bin/env python3
"""Makes a ground-truth open-world video: real photographs of objects the COCO detector does not know,
composited over a real vtest.avi frame, moving and then standing still, with every box and class known.

    python tools/openworld_video.py --out out/openworld.avi --gt out/openworld.json

Objects: Fashion-MNIST items (Debian dataset-fashion-mnist; 3 different items per class, pasted along
their silhouette) and two opencv-doc sample photographs (butterfly, fish; 2 instances each at different
sizes and mirrored). Each object owns one cell of a 4 x 4 grid, so objects never overlap. Phases:
`moving` (every object swings in its cell), `stopped` (they stand where they stopped) and `still` (a new
source: new places, still from its first frame, so background subtraction never sees them move), after
an `empty` phase with no objects."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import CLASSES, PACKAGE_DIR, DataError, read_idx  # noqa: E402

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
VTEST = DATA / "vtest.avi"
FMNIST = ("Trouser", "Sneaker", "Ankle_boot", "Dress")  # none of them is a COCO class
PHOTOS = {"butterfly": "butterfly.jpg", "fish": "HappyFish.jpg"}
GRID = 4


@dataclass
class Sprite:
    cls: str
    image: np.ndarray  # (h, w, 3) uint8 BGR
    mask: np.ndarray   # (h, w) bool, which pixels are the object


def sprites(rng: np.random.Generator, fmnist_dir: Path = PACKAGE_DIR) -> list[Sprite]:
    """3 items of each Fashion-MNIST class, 2 of each photo: 16 objects, one per grid cell."""
    images = read_idx(fmnist_dir / "t10k-images-idx3-ubyte.gz", 2051)
    labels = read_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz", 2049)
    out = []
    for name in FMNIST:
        for i in rng.choice(np.flatnonzero(labels == CLASSES.index(name)), 3, replace=False):
            side = int(rng.integers(72, 97))
            item = cv2.resize(images[i], (side, side), interpolation=cv2.INTER_CUBIC)
            ys, xs = np.nonzero(item > 24)
            item = item[ys.min():ys.max() + 1, xs.min():xs.max() + 1]  # the item's own box
            out.append(Sprite(name, cv2.cvtColor(item, cv2.COLOR_GRAY2BGR), item > 24))
    for name, file in PHOTOS.items():
        photo = cv2.imread(str(DATA / file))
        if photo is None:
            raise DataError(f"{DATA / file} not found: install the Debian package opencv-doc")
        for k, side in enumerate((80, 100)):
            h, w = photo.shape[:2]
            img = cv2.resize(photo, (side, max(1, round(side * h / w))), interpolation=cv2.INTER_AREA)
            img = img[:, ::-1].copy() if k else img
            out.append(Sprite(name, img, np.ones(img.shape[:2], bool)))
    return out


def background(frame: int = 0) -> np.ndarray:
    cap = cv2.VideoCapture(str(VTEST))
    cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
    ok, image = cap.read()
    if not ok:
        raise DataError(f"{VTEST} not readable: install the Debian package opencv-doc")
    return image


def frames(moving: int = 150, stopped: int = 60, still: int = 80, seed: int = 0, noise: float = 3.0,
           empty: int = 30):
    """Yields (phase, source, image, objects) with objects a list of {"cls", "bbox": [x1, y1, x2, y2]}.
    The first `empty` frames show the scene without objects (phase "empty"), as a camera sees it
    before they come."""
    rng = np.random.default_rng(seed)
    objs = sprites(rng)
    order = rng.permutation(len(objs))
    bg = background()
    H, W = bg.shape[:2]
    ch, cw = H // GRID, W // GRID
    amp = rng.uniform(20, 45, len(objs))
    period = rng.uniform(40, 90, len(objs))
    phase0 = rng.uniform(0, 2 * np.pi, len(objs))

    def place(cell: int, s: Sprite, dx: float, dy: float) -> tuple[int, int]:
        r, c = divmod(cell, GRID)
        h, w = s.image.shape[:2]
        x = int(np.clip(c * cw + (cw - w) / 2 + dx, 0, W - w))
        y = int(np.clip(r * ch + (ch - h) / 2 + dy, 0, H - h))
        return x, y

    def draw(positions) -> tuple[np.ndarray, list[dict]]:
        img = bg.astype(np.float32) + rng.normal(0, noise, bg.shape)  # sensor noise
        gt = []
        for s, (x, y) in zip(objs if positions else [], positions):
            h, w = s.image.shape[:2]
            img[y:y + h, x:x + w][s.mask] = s.image[s.mask]
            ys, xs = np.nonzero(s.mask)
            gt.append({"cls": s.cls, "bbox": [int(v) for v in (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)]})
        return np.clip(img, 0, 255).astype(np.uint8), gt

    def swing(i: int, t: float) -> tuple[float, float]:
        a = 2 * np.pi * t / period[i] + phase0[i]
        return amp[i] * np.sin(a), 0.3 * amp[i] * np.sin(0.7 * a)

    for t in range(empty):
        yield ("empty", "openworld-moving", draw([])[0], [])
    for t in range(moving + stopped):
        tt = min(t, moving - 1)
        pos = [place(order[i], s, *swing(i, tt)) for i, s in enumerate(objs)]
        yield ("moving" if t < moving else "stopped", "openworld-moving", *draw(pos))
    cells = rng.permutation(len(objs))  # new places for the still source
    pos = [place(cells[i], s, *rng.uniform(-20, 20, 2)) for i, s in enumerate(objs)]
    for t in range(still):
        yield ("still", "openworld-still", *draw(pos))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="video file (.avi, MJPG)")
    p.add_argument("--gt", required=True, help="ground truth JSON: one entry per frame")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        writer, gt = None, []
        for phase, source, image, objects in frames(seed=args.seed):
            if writer is None:
                writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, image.shape[1::-1])
            writer.write(image)
            gt.append({"phase": phase, "source": source, "objects": objects})
        writer.release()
    except DataError as exc:
        print(f"openworld_video: {exc}", file=sys.stderr)
        return 2
    Path(args.gt).write_text(json.dumps(gt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
