"""Frame sources: video file, image folder, webcam index, RTSP/HTTP URL; live sources keep the freshest frame."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from owd.errors import OwdError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
_MAX_BAD_READS = 25  # consecutive failed reads before a video file counts as ended


class SourceError(OwdError):
    """The source cannot be opened; the message names it and says why."""


def is_live(spec: str) -> bool:
    return spec.isdigit() or "://" in spec


def open_source(spec: str):
    """VideoFile, ImageFolder or LiveSource for a path, a webcam index or a URL."""
    if spec.isdigit():
        return LiveSource(int(spec), name=f"camera:{spec}")
    if "://" in spec:
        return LiveSource(spec, name=spec)
    path = Path(spec)
    if path.is_dir():
        return ImageFolder(path)
    if not path.exists():
        raise SourceError(f"source {spec!r} does not exist")
    return VideoFile(path)


class VideoFile:
    """Every frame of a video file, in order; unreadable frames are skipped and counted."""
    live = False

    def __init__(self, path: Path):
        self.name = str(path)
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise SourceError(f"cannot open video {path}: not a video OpenCV can decode")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.frame_count = max(int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)  # as the header says; 0 unknown
        self.corrupt = 0

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(index, BGR image); index is the frame's position in the file."""
        index, bad = 0, 0
        while bad < _MAX_BAD_READS:
            ok, image = self.cap.read()
            if ok and image is not None and image.ndim == 3:
                self.corrupt += bad  # failures followed by a good frame were corrupt frames, not the end
                index += bad
                bad = 0
                yield index, image
                index += 1
            else:
                bad += 1

    def close(self) -> None:
        self.cap.release()


class ImageFolder:
    """Images of a folder in name order; unreadable files are skipped and counted."""
    live = False
    fps = 0.0

    def __init__(self, path: Path):
        self.name = str(path)
        self.paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"image folder {path} has no {'/'.join(sorted(IMAGE_SUFFIXES))} files")
        self.corrupt = 0

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        for index, path in enumerate(self.paths):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.corrupt += 1
                continue
            yield index, image

    def close(self) -> None:
        pass


class LiveSource:
    """A camera or stream read by a thread that keeps only the freshest frame.

    A frame replaced before anyone took it is dropped; `take` reports the indices dropped since
    the previous take so the caller can count them. A stream that stops delivering is reopened
    until `reconnect_s` passes without a frame, then it ends.
    """
    live = True

    def __init__(self, target, name: str, reconnect_s: float = 10.0):
        self.name, self.target, self.reconnect_s = name, target, reconnect_s
        self.cap = cv2.VideoCapture(target)
        ok, image = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok:
            self.cap.release()
            raise SourceError(f"cannot open {name}: no frame from it (is it connected / reachable?)")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.corrupt = 0
        self.ended = False
        self._cond = threading.Condition()
        self._latest: tuple[int, float, np.ndarray] | None = (0, time.time(), image)
        self._dropped: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"read {name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        index, last_ok = 1, time.monotonic()
        while not self._stop.is_set():
            ok, image = self.cap.read()
            if not ok or image is None:
                if time.monotonic() - last_ok > self.reconnect_s:
                    break
                time.sleep(0.2)
                self.cap.release()
                self.cap = cv2.VideoCapture(self.target)
                continue
            last_ok = time.monotonic()
            with self._cond:
                if self._latest is not None:
                    self._dropped.append(self._latest[0])
                self._latest = (index, time.time(), image)
                self._cond.notify()
            index += 1
        with self._cond:
            self.ended = True
            self._cond.notify()

    def take(self, timeout: float = 0.5) -> tuple[tuple[int, float, np.ndarray] | None, list[int]]:
        """(freshest (index, capture time, image) or None, indices dropped since the last take)."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self.ended, timeout)
            latest, dropped = self._latest, self._dropped
            self._latest, self._dropped = None, []
        return latest, dropped

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        while not (self.ended and self._latest is None):
            latest, _ = self.take()
            if latest is not None:
                yield latest[0], latest[2]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.cap.release()


def save_paths(save: str, sources: list[str]) -> dict[str, str]:
    """Where each source's annotated video goes: `save` itself for one source; for several,
    STEM-NAME.EXT beside it (NAME: the source's file or folder name without suffix, made safe, with
    -2, -3, ... when two sources share one)."""
    if len(sources) <= 1:
        return {s: save for s in sources or [""]}
    path, out, used = Path(save), {}, set()
    for source in sources:
        tag = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.rstrip("/")).stem or "source").strip("._") or "source"
        name, k = tag, 1
        while name in used:
            k += 1
            name = f"{tag}-{k}"
        used.add(name)
        out[source] = str(path.with_name(f"{path.stem}-{name}{path.suffix}"))
    return out
