"""What the sink needs before it opens a window: is the display reachable, where are fonts for Qt, a loading screen."""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import threading

import cv2
import numpy as np


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
