"""Sources: every frame of a file or folder (corrupt ones skipped and counted); live sources drop stale frames; a
source that fails in a run of several ends alone."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import jsonschema
import numpy as np
import pytest

from stream.events import SCHEMA_PATH
from stream.sources import ImageFolder, LiveSource, SourceError, VideoFile, open_source


def test_video_file_gives_every_frame_in_order(bikes_video):
    source = open_source(str(bikes_video))
    assert isinstance(source, VideoFile) and not source.live and source.fps == pytest.approx(25.0)
    indices = [i for i, image in source.frames()]
    source.close()
    assert indices == list(range(250)) and source.corrupt == 0


def test_image_folder_skips_and_counts_corrupt_files(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), i * 40, np.uint8))
    (tmp_path / "002.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageFolder)
    got = [(i, int(image[0, 0, 0])) for i, image in source.frames()]
    assert got == [(0, 0), (1, 40), (3, 120)] and source.corrupt == 1


@pytest.mark.parametrize("name, kind, words", [
    ("missing.mp4", None, "does not exist"),
    ("empty", "dir", "has no"),
    ("text.mp4", "text", "cannot open video"),
])
def test_unopenable_sources(tmp_path, name, kind, words):
    path = tmp_path / name
    if kind == "dir":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a video")
    with pytest.raises(SourceError, match=words):
        open_source(str(path))


def take_slowly(source: LiveSource, takes: int) -> tuple[list[int], list[int], list[tuple]]:
    """(indices taken, indices reported dropped, image shapes) over `takes` takes 20 ms apart; closes the source."""
    taken, dropped, shapes = [], [], []
    try:
        for _ in range(takes):
            time.sleep(0.02)
            latest, skipped = source.take(timeout=2.0)
            if latest is not None:
                taken.append(latest[0])
                shapes.append(latest[2].shape)
            dropped += skipped
    finally:
        source.close()
    return taken, dropped, shapes


def assert_accounted(taken: list[int], dropped: list[int]) -> None:
    assert taken == sorted(taken) and len(set(taken)) == len(taken)
    assert not set(taken) & set(dropped)
    assert sorted(taken + dropped) == list(range(max(taken) + 1))  # every frame read is accounted for


def test_live_source_keeps_the_freshest_frame_and_reports_drops(bikes_video):
    # A file read as a live stream decodes far faster than we take frames, so most are dropped.
    taken, dropped, _ = take_slowly(LiveSource(str(bikes_video), name="live-test"), 20)
    assert len(dropped) > len(taken)  # decoding outpaced us: drops happened and were reported
    assert_accounted(taken, dropped)


def test_http_stream_is_a_live_source(http_video):
    source = open_source(http_video)
    assert isinstance(source, LiveSource) and source.live
    taken, dropped, shapes = take_slowly(source, 10)
    assert_accounted(taken, dropped)
    assert set(shapes) == {(120, 160, 3)}


def test_unreachable_url_is_a_source_error():
    with pytest.raises(SourceError, match="cannot open"):
        open_source("http://127.0.0.1:9/none.avi")


def test_a_stream_that_dies_ends_after_the_reconnect_window(http_video):
    from conftest import url_server
    source = LiveSource(http_video, name="dying", reconnect_s=1.0)
    try:
        latest, _ = source.take(timeout=2.0)
        assert latest is not None
        url_server[http_video].shutdown()  # the camera goes away
        url_server[http_video].server_close()
        deadline = time.monotonic() + 10
        while not source.ended and time.monotonic() < deadline:
            source.take(timeout=0.2)
        assert source.ended
    finally:
        source.close()


def write_clip(path, frames: int) -> None:
    """A small MJPG AVI: a bright box moving over grey (a header that declares `frames`)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(frames):
        image = np.full((120, 160, 3), 40, np.uint8)
        cv2.rectangle(image, (5 + 3 * i, 30), (35 + 3 * i, 90), (0, 200, 255), -1)
        writer.write(image)
    writer.release()


def test_a_source_that_fails_does_not_end_the_others(tmp_path):
    """A good clip, the same clip cut in half (it opens, its header still says 40 frames) and a file that is
    no video at all: the good one logs (and saves, in its own video) all its frames, the cut one the frames before the cut,
    each bad one a source_failed record; the run exits 1 and says which failed. A run whose every source fails
    is one line and exit 2."""
    from conftest import ROOT
    from stream.events import read_log
    good, cut, junk, full = tmp_path / "good.avi", tmp_path / "cut.avi", tmp_path / "junk.mp4", tmp_path / "full.avi"
    write_clip(good, 40)
    write_clip(full, 40)
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    junk.write_text("not a video")
    readable = sum(1 for _ in VideoFile(cut).frames())
    assert 0 < readable < 39
    events = tmp_path / "ev.jsonl"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--headless", "--events", str(events)]
    result = subprocess.run([*cmd, "--source", str(good), "--source", str(cut), "--source", str(junk),
                             "--save", str(tmp_path / "out" / "annotated.avi")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]  # the others ran to the end; not everything was done
    assert "2 source(s) failed" in result.stdout and "cut.avi" in result.stdout and "junk.mp4" in result.stdout
    recs = read_log(events)
    summary = next(r for r in recs if r["type"] == "run_summary")
    assert sorted(summary["failed_sources"]) == sorted([str(cut), str(junk)])
    for source, n in ((good, 40), (cut, readable)):
        frames = [r["frame"] for r in recs if r["type"] == "frame" and r["source"] == str(source)]
        assert frames == list(range(n)), source
    failed = {r["source"]: r for r in recs if r["type"] == "source_failed"}
    assert set(failed) == {str(cut), str(junk)}
    assert failed[str(cut)]["frames"] == readable and f"after {readable} of the 40 frames" in failed[str(cut)]["error"]
    assert failed[str(junk)]["frames"] == 0 and "cannot open video" in failed[str(junk)]["error"]
    assert result.stderr.count("failed after") == 2
    videos = {p.name: cv2.VideoCapture(str(p)) for p in (tmp_path / "out").iterdir()}  # one per source that gave frames
    assert {name: int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) for name, cap in videos.items()} == \
        {"annotated-good.avi": 40, "annotated-cut.avi": readable}
    assert {int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) for cap in videos.values()} == {160}
    schema = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    assert not [e.message for rec in recs for e in schema.iter_errors(rec)]

    (tmp_path / "junk2.avi").write_text("no video either")
    alone = subprocess.run([*cmd, "--source", str(junk), "--source", str(tmp_path / "junk2.avi")], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert alone.returncode == 2 and "no source could be opened" in alone.stderr
