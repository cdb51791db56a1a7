"""Example-crop folders of classes: one owner-only folder per checked class name, crops written owner-only."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from models.sddc import check_name


def class_folder(crops_dir: Path, name: str) -> Path:
    """crops_dir/name; ValueError unless name is a class name and the path (links followed) stays inside."""
    folder = Path(crops_dir) / check_name(name)
    if not folder.resolve().is_relative_to(Path(crops_dir).resolve()):
        raise ValueError(f"class folder {folder} leads outside {crops_dir}")
    return folder


def private_folder(folder: Path) -> Path:
    """folder, created if needed, readable by its owner only (crops show people)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def write_png(path: Path, image: np.ndarray) -> None:
    """image (H, W, 3) BGR uint8 as a PNG readable by its owner only, from its first byte."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {path.name} as PNG")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_TRUNC
    with os.fdopen(fd, "wb") as f:
        f.write(data.tobytes())


def move_crops(crops_dir: Path | None, old: str, new: str) -> None:
    """old's example crops join new's folder (renamed so none is overwritten); old's folder goes."""
    if crops_dir is None:
        return
    src, dst = class_folder(crops_dir, old), class_folder(crops_dir, new)
    if not src.is_dir():
        return
    private_folder(dst)
    for i, png in enumerate(sorted(src.glob("*.png"))):
        png.rename(dst / f"{old}-{i:03d}.png")
    shutil.rmtree(src, ignore_errors=True)


def delete_crops(crops_dir: Path | None, name: str) -> None:
    if crops_dir is not None:
        shutil.rmtree(class_folder(crops_dir, name), ignore_errors=True)
