#!/usr/bin/env python3
"""Turns the Debian package dataset-fashion-mnist (idx files) into an ImageFolder of PNGs named by class."""
from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import cv2
import numpy as np

PACKAGE_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
SPLITS = {"train": "train", "test": "t10k"}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


class DataError(Exception):
    """The idx files are missing or malformed; the message says what to do."""


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file (gzipped or not) -> uint8 array: (N, H, W) for images (magic 2051), (N,) for labels (2049)."""
    if not path.is_file():
        raise DataError(f"{path} not found; install the Debian package (apt-get install dataset-fashion-mnist) "
                        f"or pass --source DIR holding {path.name}")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    dims = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * dims
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise DataError(f"{path} is not an idx file with magic {magic}")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path} holds {len(raw) - header} bytes of data, its header says {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def convert(source: Path, out: Path, split: str = "train", per_class: int = 0) -> dict[str, int]:
    """Writes out/<class>/<split>-<index>.png for the first per_class images of each class (0 = all).
    Returns images written per class."""
    stem = SPLITS[split]
    images = read_idx(source / f"{stem}-images-idx3-ubyte.gz", IMAGES_MAGIC)
    labels = read_idx(source / f"{stem}-labels-idx1-ubyte.gz", LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels in the {split} split")
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"{source}: label {labels.max()} is not a Fashion-MNIST class (0-9)")
    written = {}
    for c, name in enumerate(CLASSES):
        rows = np.flatnonzero(labels == c)
        rows = rows[:per_class] if per_class > 0 else rows
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in rows:
            if not cv2.imwrite(str(folder / f"{split}-{i:05d}.png"), images[i]):
                raise DataError(f"cannot write {folder / f'{split}-{i:05d}.png'}; check that --out is writable")
        written[name] = len(rows)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fashion_mnist.py", description=__doc__)
    p.add_argument("--out", required=True, help="ImageFolder root to create")
    p.add_argument("--per-class", type=int, default=0, help="first N images of each class (default: all)")
    p.add_argument("--split", choices=sorted(SPLITS), default="train")
    p.add_argument("--source", default=str(PACKAGE_DIR), help=f"folder of the idx .gz files (default {PACKAGE_DIR})")
    args = p.parse_args(argv)
    if args.per_class < 0:
        print("fashion_mnist: --per-class must be >= 0 (0 = all images)", file=sys.stderr)
        return 2
    try:
        written = convert(Path(args.source), Path(args.out), args.split, args.per_class)
    except DataError as exc:
        print(f"fashion_mnist: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {sum(written.values())} images in {len(written)} classes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
