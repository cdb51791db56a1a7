"""Seen classes from example images: `--gallery DIR` (DIR/<class>/*.jpg) becomes classes in the memory file before a run."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from models.detections import Embedder
from models.registry import EMBEDDERS, ModelError
from models.boxes import example
from models.sddc import Gate, MemoryFileError, check_name, load_memory, normalize, save_gate
from stages.config import ConfigError, Settings
from stages.crops import class_folder, private_folder, write_png
from stream.sources import IMAGE_SUFFIXES


def read_gallery(folder: Path) -> dict[str, list[np.ndarray]]:
    """Class name -> its readable images (BGR); raises ConfigError when there is nothing to use."""
    if not folder.is_dir():
        raise ConfigError(f"gallery {folder} is not a folder (expected DIR/<class name>/*.jpg)")
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            check_name(sub.name)  # it becomes a class name, an event field and a crops folder
        except ValueError as exc:
            raise ConfigError(f"gallery {folder}: {exc}") from None
        images = [cv2.imread(str(p)) for p in sorted(sub.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        images = [im for im in images if im is not None]
        if images:
            classes[sub.name] = images
    if not classes:
        raise ConfigError(f"gallery {folder} has no <class name>/ subfolder with readable images")
    return classes


def build(gate: Gate, embedder: Embedder, classes: dict[str, list[np.ndarray]], alpha: float,
          keep: int = 256, centre: bool = True) -> list[str]:
    """Adds (or replaces) one class per gallery folder the way discovery builds a class: centroid and
    radius from its images' embeddings, the newest `keep` kept as members (so it anchors clustering).
    Gallery classes are seen classes: a person defined them, discovery never grows them. With `centre`
    the gate is then centred on the seen classes (gate.centre; every class refitted from its members)."""
    for name, images in classes.items():
        if name in gate.names:
            gate.remove(name)
        gate.add_members(name, normalize(embedder.embed(images))[-keep:], alpha, discovered=False)
    if centre:
        gate.centre_on_seen(alpha)
    return list(classes)


def main(settings: Settings, folder: str) -> int:
    """Builds the gallery classes into settings.gate.memory with the run's embedder."""
    e, g = settings.embed, settings.gate
    try:
        classes = read_gallery(Path(folder))
        embedder = EMBEDDERS.create(e.model, weights=e.weights, device=e.device, **e.options)
        gate = load_memory(g.memory, g.set_size, g.radius_pool)
    except (ConfigError, ModelError, MemoryFileError) as exc:
        print(f"owd gallery: {exc}", file=sys.stderr)
        return 2
    names = build(gate, embedder, classes, g.alpha, settings.cluster.max_members, g.centre)
    save_gate(gate, g.memory)
    crops = settings.crops_dir
    for name in names:
        folder = private_folder(class_folder(crops, name))
        for i, image in enumerate(classes[name][:settings.cluster.examples]):
            write_png(folder / f"gallery-{i:03d}.png", example(image, g.thumb))
    print(f"owd: gallery classes {', '.join(names)} -> {g.memory}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(Settings.from_json(sys.stdin.read()), sys.argv[1]))
