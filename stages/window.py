"""The sink's picture: the window (one source, or a mosaic of one tile per source), the annotated videos and the HUD."""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import threading
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from stream.messages import LabeledFrame
from stream.overlay import ClassBook, Overlay, cell_size, mosaic
from stream.sources import save_paths


def display_reachable(display: str, timeout_s: float = 10.0) -> bool:
    """Can an X client connect to `display` (DISPLAY syntax) now? Asked of libxcb, as Qt's xcb plugin
    will; a server that does not answer within timeout_s counts as unreachable."""
    path = ctypes.util.find_library("xcb")
    if not display or path is None:
        return bool(display)  # no libxcb to ask: let Qt try
    lib = ctypes.CDLL(path)
    lib.xcb_connect.restype, lib.xcb_connect.argtypes = ctypes.c_void_p, (ctypes.c_char_p, ctypes.c_void_p)
    lib.xcb_connection_has_error.argtypes = lib.xcb_disconnect.argtypes = (ctypes.c_void_p,)
    answer: list[bool] = []

    def ask() -> None:
        conn = lib.xcb_connect(display.encode(), None)
        answer.append(lib.xcb_connection_has_error(conn) == 0)
        lib.xcb_disconnect(conn)

    thread = threading.Thread(target=ask, daemon=True)  # a tcp display that drops packets would block for minutes
    thread.start()
    thread.join(timeout_s)
    return bool(answer and answer[0])


def font_dir() -> str:
    """A folder of TrueType fonts for Qt: the system's DejaVu, else the one matplotlib (a dependency of
    supervision) ships."""
    system = "/usr/share/fonts/truetype/dejavu"
    if os.path.isdir(system):
        return system
    spec = importlib.util.find_spec("matplotlib")
    return os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf") if spec else system


def waiting_screen(text: str = "loading models...") -> np.ndarray:
    image = np.full((360, 640, 3), 32, np.uint8)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
    cv2.putText(image, text, ((640 - tw) // 2, (360 + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2,
                cv2.LINE_AA)
    return image


class Display:
    """The window and the annotated videos; either may be off. `closed` turns true when the user quits. A
    window whose display cannot be reached is one warning and no window (Qt would abort the process);
    until the first frame it says that the models are loading. With several sources the window shows a
    mosaic, one tile per source (its latest frame, its own HUD), and each source gets its own video."""

    def __init__(self, window: str | None, save: str | None, sources: list[str] | None = None):
        self.window, self.save = window, save
        self.sources = list(sources or [])
        self.paths = save_paths(save, self.sources) if save else {}
        self.writers: dict[str, cv2.VideoWriter] = {}
        self.overlays: dict[str, Overlay] = {}
        self.tiles: dict[str, np.ndarray] = {}
        self.cell: tuple[int, int] | None = None
        self.closed = self.shown = False
        if window and not display_reachable(os.environ.get("DISPLAY", "")):
            logging.getLogger("owd.sink").warning("display %r cannot be reached: running without a window",
                                                  os.environ.get("DISPLAY", ""))
            self.window = None
        if self.window:
            if not os.path.isdir(os.environ.get("QT_QPA_FONTDIR", "")):  # cv2 points Qt at a font folder its
                os.environ["QT_QPA_FONTDIR"] = font_dir()                  # wheel lacks: a warning per repaint
            cv2.namedWindow(self.window, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
            screen = waiting_screen()
            cv2.resizeWindow(self.window, screen.shape[1], screen.shape[0])
            cv2.imshow(self.window, screen)
            self.idle()

    @property
    def active(self) -> bool:
        return bool(self.window or self.save)

    @property
    def many(self) -> bool:
        return len(self.sources) > 1

    def idle(self) -> None:
        """Between frames: the window repaints and hears q / Esc (before the first frame, too)."""
        if self.window and cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.closed = True

    def draw(self, msg: LabeledFrame, hud: "Hud", rejected: int) -> np.ndarray:
        """The annotated frame (the tile of its source), with the HUD of its source."""
        size = (msg.image.shape[1], msg.image.shape[0])
        overlay = self.overlays.get(msg.source)
        if overlay is None or overlay.wh != size:  # a folder's images may differ in size
            overlay = self.overlays[msg.source] = Overlay(size)
        return overlay.draw(msg, hud.book, hud.lines(msg.index, rejected, msg.source if self.many else None))

    def show(self, msg: LabeledFrame, hud: "Hud", rejected: int) -> None:
        image = self.draw(msg, hud, rejected)
        if self.save:
            self.write(msg.source, image, hud.rate_of(msg.source))
        if self.window:
            if self.many:
                if msg.source not in self.sources:  # named otherwise than in the settings: a tile of its own
                    self.sources.append(msg.source)
                self.tiles[msg.source] = image
                self.cell = self.cell or cell_size((image.shape[1], image.shape[0]), len(self.sources))
                notes = [f"{Path(s).name}: failed" if s in hud.failed else f"waiting for {Path(s).name}"
                         for s in self.sources]
                image = mosaic([self.tiles.get(s) for s in self.sources], notes, self.cell)
            if not self.shown:
                cv2.resizeWindow(self.window, image.shape[1], image.shape[0])
                self.shown = True
            cv2.imshow(self.window, image)
            self.idle()

    def write(self, source: str, image: np.ndarray, fps: float) -> None:
        """One frame to its source's video (the first frame opens the file at the source's rate)."""
        path = self.paths.get(source, self.save) if self.many else self.save
        writer = self.writers.get(path)
        if writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.endswith(".mp4") else "MJPG"))
            writer = self.writers[path] = cv2.VideoWriter(path, fourcc, fps or 25.0, (image.shape[1], image.shape[0]))
            if not writer.isOpened():
                raise OSError(f"cannot write video {path}")
        writer.write(image)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.release()
        if self.window:
            cv2.destroyAllWindows()


class Hud:
    """What the overlay's corner says, per source and for all: processing rate, drops, rejected messages,
    classes known (loaded from the class memory and discovered), and each class's colour id."""

    def __init__(self):
        self.arrivals: dict[str | None, deque[float]] = {}  # None: every source; wall times, >= 64 and >= 10 s
        self.book = ClassBook()
        self.loaded = 0  # the cluster stage's count at start, for a run whose log gives no names
        self.dropped_by: dict[tuple[str, str], int] = {}  # (stage, source) -> its running total
        self.source_fps = 0.0  # the first source's frame rate (capture's stage_started)
        self.rates: dict[str, float] = {}  # each source's frame rate
        self.failed: dict[str, str] = {}  # source -> its error (source_failed)

    def on_event(self, rec: dict) -> None:
        kind, name = rec["type"], rec.get("class")
        if kind == "frame_dropped":
            self.dropped_by[(rec.get("stage", ""), str(rec.get("source", "")))] = rec.get("total", 0)
        elif kind == "source_failed" and isinstance(rec.get("source"), str):
            self.failed[rec["source"]] = str(rec.get("error", ""))
        elif kind in ("class_discovered", "class_updated") and isinstance(name, str):
            self.book.id(name)
        elif kind == "class_renamed" and isinstance(name, str) and isinstance(rec.get("old"), str):
            self.book.rename(rec["old"], name)
        elif kind == "class_merged" and isinstance(rec.get("merged"), str):
            self.book.remove(rec["merged"])
        elif kind == "class_deleted" and isinstance(name, str):
            self.book.remove(name)
        elif kind == "stage_started" and rec.get("stage") == "cluster":
            names = rec.get("names")  # from the wire: any JSON value
            for n in names if isinstance(names, list) else ():
                if isinstance(n, str):
                    self.book.id(n)
            self.loaded = rec["classes"] if isinstance(rec.get("classes"), int) else 0
        elif kind == "stage_started" and rec.get("stage") == "capture":
            self.source_fps = _rate(rec.get("fps"))
            sources, rates = rec.get("sources"), rec.get("source_fps")
            if isinstance(sources, list) and isinstance(rates, list) and len(sources) == len(rates):
                self.rates = {str(s): _rate(r) for s, r in zip(sources, rates)}

    def rate_of(self, source: str) -> float:
        """A source's own frame rate (0 unknown), for its video."""
        return self.rates.get(source, self.source_fps if not self.rates else 0.0)

    def on_frame(self, now: float, source: str | None = None) -> None:
        for key in {None, source}:
            arrivals = self.arrivals.setdefault(key, deque())
            arrivals.append(now)
            while len(arrivals) > 65 and now - arrivals[1] >= 10.0:
                arrivals.popleft()

    def rate(self, source: str | None = None) -> float | None:
        """Frames completed (of `source`, or of all) over wall time, over the last >= 10 s and >= 64
        frames (frames arrive in bursts of a batch: a short window would measure the burst); None until
        16 frames are in."""
        arrivals = self.arrivals.get(source, ())
        if len(arrivals) < 16 or arrivals[-1] <= arrivals[0]:
            return None
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])

    @property
    def fps(self) -> float | None:
        return self.rate(None)

    def lines(self, index: int, rejected: int, source: str | None = None) -> list[str]:
        """The HUD: of the whole run, or (source given: a tile of a mosaic) of that source, named first."""
        fps = self.rate(source)
        fps = f"{fps:5.1f}" if fps is not None else "  ..."
        dropped = sum(n for (_, s), n in self.dropped_by.items() if source is None or s == source)
        lines = [f"{fps} fps  frame {index}", f"dropped {dropped}  rejected {rejected}",
                 f"classes {max(len(self.book), self.loaded)}"]
        return lines if source is None else [Path(source.rstrip("/")).name or source, *lines]


def _rate(fps) -> float:
    return float(fps) if isinstance(fps, (int, float)) and 0 < fps <= 1000 else 0.0
