"""The window under a real X server (Xvfb, on a display number it picks itself) and the saved video of a real run:
what a person sees must be what the overlay promises."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest
import supervision as sv

from conftest import ROOT
from stream.overlay import FONT, PALETTE, UNSEEN, Overlay
from test_overlay import labeled, near


@pytest.fixture(scope="module")
def xvfb():
    """A private X server; DISPLAY points at it for this module's tests and their children. One per module:
    OpenCV's Qt stays connected to the first display it opened, and aborts the process once that server is gone."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (Debian package xvfb)")
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    while not number.endswith(b"\n") and (chunk := os.read(read, 16)):  # written once the server accepts clients
        number += chunk
    os.close(read)
    if not number.strip().isdigit():
        proc.kill()
        pytest.skip("Xvfb did not start")
    display, old = ":" + number.decode().strip(), os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = display
    yield display
    proc.terminate()
    proc.wait()
    if old is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = old


def grab(display: str) -> np.ndarray:
    from PIL import ImageGrab
    return np.asarray(ImageGrab.grab(xdisplay=display))[:, :, ::-1]  # RGB -> BGR


def test_window_says_loading_then_shows_boxes_and_legend(xvfb):
    from stages.sink import Display, Hud
    display = Display("owd-test", None)
    try:
        for _ in range(10):  # a window-manager-less server needs a few rounds to map and paint
            display.idle()
            time.sleep(0.05)
        loading = grab(xvfb)
        hud = Hud()
        msg = labeled(np.zeros((300, 400, 3), np.uint8), [[40, 80, 140, 260], [160, 90, 240, 250], [260, 100, 360, 250]],
                      ["novel-1", "novel-2", "unseen"], [True, True, False])
        for _ in range(10):
            display.show(msg, hud, 0)
            time.sleep(0.05)
        shot = grab(xvfb)
    finally:
        display.close()
    assert display.window == "owd-test"
    assert (np.abs(loading.astype(int) - 32).max(axis=2) <= 2).sum() > 100_000, "no loading screen"
    assert near(loading, sv.Color.WHITE, 30).sum() > 200, "no text on the loading screen"
    assert near(loading, PALETTE[0]).sum() == 0
    for color, least in ((PALETTE[0], 300), (PALETTE[1], 300), (UNSEEN, 100)):
        assert near(shot, color).sum() > least, f"{color} is not on screen"


def test_unreachable_display_is_one_warning_and_no_window(tmp_path):
    missing = next(n for n in range(600, 700) if not os.path.exists(f"/tmp/.X11-unix/X{n}"))
    code = "from stages.sink import Display; d = Display('owd', None); print(d.window); d.close()"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, DISPLAY=f":{missing}", TMPDIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-2000:]  # Qt would abort: exit -6
    assert result.stdout.strip() == "None"
    assert result.stderr.count("cannot be reached") == 1 and "qt.qpa" not in result.stderr


def read_hud_fps(image: np.ndarray, index: int, overlay: Overlay) -> float:
    """The rate printed on the HUD's first line, read back by drawing every candidate and keeping the best match."""
    org = (4 + overlay.pad, 4 + overlay.line - overlay.line // 3)
    region = (slice(4, 4 + overlay.line), slice(0, 260))
    seen = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[region] > 140

    def score(fps: float) -> float:
        canvas = np.zeros(image.shape[:2], np.uint8)
        cv2.putText(canvas, f"{fps:5.1f} fps  frame {index}", org, FONT, overlay.scale, 255, 1, cv2.LINE_AA)
        drawn = canvas[region] > 140
        return (drawn & seen).sum() / max((drawn | seen).sum(), 1)

    return max((k / 10 for k in range(1000)), key=score)


def test_saved_video_after_discovery(bikes_video, tmp_path, xvfb):
    """A real run with a window: the saved video's last frame, once classes were discovered, shows box colours
    distinct per class (grey for unseen), a legend, labels apart from each other, and the log's own rate."""
    events, video = tmp_path / "ev.jsonl", tmp_path / "out.avi"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(bikes_video), "--events", str(events),
           "--save", str(video), "--max-frames", "48", "--set", "gate.track=false", "--set", "cluster.min_size=4",
           "--set", "cluster.period_frames=8"]
    # TMPDIR stays the test's own short one (conftest.own_tmpdir): the run's ipc paths must fit 107 bytes
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "QFontDatabase" not in result.stderr and "cannot be reached" not in result.stderr
    recs = [json.loads(line) for line in events.read_text().splitlines()]
    frames = [r for r in recs if r["type"] == "frame"]
    discovered = min(r["ts"] for r in recs if r["type"] == "class_discovered")
    last = frames[-1]
    assert last["ts"] > discovered
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, len(frames) - 1)
    ok, image = cap.read()
    cap.release()
    assert ok
    h, w = image.shape[:2]
    overlay = Overlay((w, h))

    boxes = [r for r in recs if r["type"] == "detection" and r["frame"] == last["frame"]]
    colour_of: dict[str, tuple] = {}
    for r in boxes:  # the median colour along each box's left and right edges
        x1, y1, x2, y2 = (int(v) for v in r["bbox"])
        edge = np.concatenate([image[y1:y2 + 1, min(x1, w - 1)], image[y1:y2 + 1, min(x2, w - 1)]])
        c = tuple(int(v) for v in np.median(edge, axis=0))
        want = [UNSEEN] if not r["seen"] else PALETTE
        assert min(np.abs(np.array(c) - p.as_bgr()).max() for p in want) <= 40, (r, c)
        colour_of.setdefault(r["label"] if r["seen"] else "unseen", c)
    named = [c for k, c in colour_of.items() if k != "unseen"]
    for a in range(len(named)):
        for b in range(a + 1, len(named)):
            assert np.abs(np.array(named[a]) - named[b]).max() > 40, "two classes share a colour"

    legend = image[4:4 + overlay.line * 8, w // 2:]
    assert (np.abs(legend.astype(int) - UNSEEN.as_bgr()).max(axis=2) <= 30).sum() >= 9, "no legend"
    assert sum((np.abs(legend.astype(int) - p.as_bgr()).max(axis=2) <= 30).sum() >= 9 for p in PALETTE) >= 1

    tall = overlay.label_size("novel-1 (person)")[1]
    labels = []  # label fills: solid rectangles of a palette colour or grey as tall as a label, text closed over
    for p in (*PALETTE, UNSEEN):
        mask = (np.abs(image.astype(int) - p.as_bgr()).max(axis=2) <= 30).astype(np.uint8)
        mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5))), cv2.MORPH_OPEN, np.ones((7, 7)))
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        labels += [(x, y, x + bw - 1, y + bh - 1) for x, y, bw, bh, area in stats[1:]
                   if area >= 60 and abs(bh - tall) <= 3]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert not (a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]), ("labels overlap", a, b)

    ts = [r["ts"] for r in frames]
    rate = (len(ts) - 1) / (ts[-1] - ts[0])
    shown = read_hud_fps(image, last["frame"], overlay)
    assert shown == pytest.approx(rate, rel=0.2), (shown, rate)


def test_one_source_draws_as_before_several_get_a_named_hud_each():
    from stages.sink import Display, Hud
    msg = labeled(np.zeros((300, 400, 3), np.uint8), [[40, 80, 140, 260]], ["novel-1"], [True])
    hud = Hud()
    one = Display(None, None, [msg.source]).draw(msg, hud, 2)
    want = Overlay((400, 300)).draw(msg, hud.book, ["  ... fps  frame 0", "dropped 0  rejected 2", "classes 0"])
    assert (one == want).all()  # no source name, the run's own counts: the picture of a one-source run
    two = Display(None, None, [msg.source, "/elsewhere/b.avi"]).draw(msg, hud, 2)
    named = Overlay((400, 300)).draw(msg, hud.book, [os.path.basename(msg.source) or msg.source, "  ... fps  frame 0",
                                                     "dropped 0  rejected 2", "classes 1"])
    assert (two == named).all()


def test_several_sources_show_as_a_mosaic_one_tile_each(xvfb):
    from stages.sink import Display, Hud
    a, b = "/videos/a.avi", "/videos/b.avi"
    frame_a, frame_b = (labeled(np.zeros((300, 400, 3), np.uint8), [[40, 80, 140, 260]], [name], [True])
                        for name in ("novel-1", "novel-2"))
    frame_a, frame_b = (replace(f, frame=replace(f.frame, source=s)) for f, s in ((frame_a, a), (frame_b, b)))
    display, hud = Display("owd-test", None, [a, b]), Hud()

    def settle(color) -> np.ndarray:
        """The screen once a box of `color` shows (a window-manager-less server needs a few rounds to map and
        paint, more on a loaded machine), or as it is after 20 s."""
        deadline = time.monotonic() + 20
        while True:
            for _ in range(10):
                display.idle()
                time.sleep(0.05)
            shot = grab(xvfb)
            if len(edges(shot, color)) or time.monotonic() > deadline:
                return shot

    def edges(shot: np.ndarray, color) -> np.ndarray:
        return np.flatnonzero(near(shot, color).sum(axis=0) >= 100)  # columns of a box's long sides

    try:
        display.show(frame_a, hud, 0)
        first = settle(PALETTE[0])
        display.show(frame_b, hud, 0)
        both = settle(PALETTE[1])
    finally:
        display.close()
    left = edges(first, PALETTE[0])
    assert len(left) and not len(edges(first, PALETTE[1]))
    scale = (left.max() - left.min()) / 100  # the window may show the mosaic scaled (its size is the server's)
    x0 = left.min() - 40 * scale  # the mosaic's left edge on the screen
    waiting = first[:, int(x0 + 410 * scale):int(x0 + 790 * scale)]  # the second tile before its first frame: a note
    assert near(waiting, sv.Color.WHITE, 60).sum() > 50
    right = edges(both, PALETTE[1])
    assert len(right) and (right.min() - left.min()) / scale == pytest.approx(400, abs=8)  # the same box, a tile on
    assert edges(both, PALETTE[0]).max() < x0 + 400 * scale  # the first tile kept its frame
