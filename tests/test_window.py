"""The overlay window under a real X server (Xvfb): a screenshot must show the drawn boxes and HUD."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from conftest import frame_fields
from stream.messages import LabeledFrame
from stream.overlay import UNSEEN_COLOR, class_color, draw


@pytest.fixture
def xvfb():
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (Debian package xvfb)")
    display = ":57"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        pytest.skip("Xvfb did not start")
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = display
    yield display
    proc.terminate()
    proc.wait()
    if old is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = old


def sample_frame() -> LabeledFrame:
    fields = frame_fields(0, h=300, w=400)
    fields["image"] = np.zeros((300, 400, 3), np.uint8)
    return LabeledFrame(**fields, xyxy=np.float32([[40, 60, 180, 260], [220, 80, 360, 240]]),
                        scores=np.float32([0.9, 0.8]), det_labels=("person", "car"), labels=("novel-1", "unseen"),
                        seen=np.array([True, False]), distance=np.float32([0.1, 0.9]), track=np.int64([-1, -1]))


def has_color(image: np.ndarray, bgr, tol: int = 8) -> int:
    return int((np.abs(image.astype(int) - np.array(bgr)).max(axis=2) <= tol).sum())


def test_draw_marks_seen_and_unseen_boxes():
    image = draw(sample_frame(), ["12.0 fps"])
    assert has_color(image[55:265, 35:185], class_color("novel-1")) > 200
    assert has_color(image[75:245, 215:365], UNSEEN_COLOR) > 100
    assert has_color(image[:30, :120], (255, 255, 255)) > 10  # HUD text


def test_window_shows_boxes_on_screen(xvfb):
    from PIL import ImageGrab

    from stages.sink import Display
    display = Display("owd-test", None)
    try:
        for _ in range(20):  # give the window manager-less server time to map and paint
            display.show(draw(sample_frame(), ["12.0 fps"]), 25.0)
            time.sleep(0.05)
        shot = np.asarray(ImageGrab.grab(xdisplay=xvfb))[:, :, ::-1]  # RGB -> BGR
    finally:
        display.close()
    assert has_color(shot, class_color("novel-1")) > 200, "the seen box is not on screen"
    assert has_color(shot, UNSEEN_COLOR) > 100, "the unseen box is not on screen"
