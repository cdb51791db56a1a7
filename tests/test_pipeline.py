"""The whole multi-process pipeline on a real clip: one frame record per frame, six processes, nothing left behind."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import cv2
import jsonschema
import pytest

from conftest import ROOT
from stream.events import SCHEMA_PATH

STAGES = {"capture", "detect", "embed", "gate", "cluster", "sink"}


def owd_dirs(supervisor: int | str = "*") -> set[str]:
    """The run folders of one supervisor process (named owd-PID-…), or of all."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), f"owd-{supervisor}-*")))


def records(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stage_pids(recs: list[dict]) -> dict[str, int]:
    return {r["stage"]: r["pid"] for r in recs if r["type"] == "stage_started"}


def assert_nothing_left(recs: list[dict], supervisor: int) -> None:
    pids = stage_pids(recs)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [s for s, p in pids.items() if alive(p)], "stage processes outlived the supervisor"
    assert not owd_dirs(supervisor), "ipc folder left behind"


def test_pipeline_end_to_end_on_a_real_clip(bikes_video, tmp_path):
    events, video = tmp_path / "ev.jsonl", tmp_path / "out.avi"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(bikes_video), "--headless",
           "--events", str(events), "--save", str(video), "--max-frames", "40",
           "--set", "cluster.min_size=4", "--set", "cluster.period_frames=10"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-2000:]
    recs = records(events)

    frames = [r["frame"] for r in recs if r["type"] == "frame"]
    assert sorted(frames) == list(range(40)) and len(frames) == len(set(frames))
    pids = stage_pids(recs)
    assert set(pids) == STAGES
    assert len(set(pids.values())) == 6 and proc.pid not in pids.values()  # each stage its own process

    detections = [r for r in recs if r["type"] == "detection"]
    assert detections and {"person", "bicycle"} & {r["det_label"] for r in detections}
    schema = json.loads(SCHEMA_PATH.read_text())
    for rec in recs:
        jsonschema.validate(rec, schema)
    stopped = {r["stage"]: r for r in recs if r["type"] == "stage_stopped"}
    assert stopped["capture"]["frames"] == 40 and stopped["sink"]["frames"] == 40

    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    cap.release()
    assert_nothing_left(recs, proc.pid)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_drains_and_shuts_down_cleanly(bikes_video, tmp_path, sig):
    events = tmp_path / "ev.jsonl"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(bikes_video), "--headless",
           "--events", str(events)]
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=err)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if events.exists() and sum(1 for r in records(events) if r["type"] == "frame") >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(sig)
    assert proc.wait(timeout=300) == 130  # the frames in flight are processed first
    err.close()
    said = (tmp_path / "stderr.txt").read_text()
    assert "owd: stopping: no new frames are read" in said  # the drain is not silent
    recs = records(events)
    frames = sorted(r["frame"] for r in recs if r["type"] == "frame")
    assert 5 <= len(frames) < 250 and frames == list(range(len(frames)))  # stopped early, nothing lost
    capture = next(r for r in recs if r["type"] == "stage_stopped" and r["stage"] == "capture")
    assert capture["reason"] == "stopped" and capture["frames"] == len(frames)
    assert_nothing_left(recs, proc.pid)


def test_restart_with_memory_keeps_discovered_and_renamed_classes(bikes_video, tmp_path):
    memory = tmp_path / "new folder" / "classes.npz"  # created by the run
    common = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(bikes_video), "--headless",
              "--memory", str(memory), "--max-frames", "40", "--set", "gate.track=false",
              "--set", "cluster.min_size=4", "--set", "cluster.period_frames=8"]
    first = subprocess.run(common + ["--events", str(tmp_path / "1.jsonl")], cwd=ROOT, capture_output=True,
                           text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-2000:]
    found = [r["class"] for r in records(tmp_path / "1.jsonl") if r["type"] == "class_discovered"]
    assert found and memory.exists()
    assert list((memory.parent / "classes.npz.crops" / found[0]).glob("*.png"))  # examples to name it by

    rename = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "classes", "rename", found[0],
                             "cyclist", "--memory", str(memory)], cwd=ROOT, capture_output=True, text=True)
    assert rename.returncode == 0, rename.stderr

    second = subprocess.run(common + ["--events", str(tmp_path / "2.jsonl")], cwd=ROOT, capture_output=True,
                            text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-2000:]
    recs = records(tmp_path / "2.jsonl")
    first_new = min([r["ts"] for r in recs if r["type"] == "class_discovered"], default=float("inf"))
    early = [r for r in recs if r["type"] == "detection" and r["ts"] < first_new]
    assert any(r["label"] == "cyclist" for r in early), "the renamed class was not recognised after restart"


def test_live_stream_drops_stale_frames_and_reports_every_drop(http_video, tmp_path):
    events = tmp_path / "ev.jsonl"
    result = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "--source", http_video, "--headless",
                             "--events", str(events), "--max-frames", "15"], cwd=ROOT, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    recs = records(events)
    frames = [r["frame"] for r in recs if r["type"] == "frame"]
    dropped = [i for r in recs if r["type"] == "frame_dropped" for i in r["frames"]]
    capture = next(r for r in recs if r["type"] == "stage_stopped" and r["stage"] == "capture")
    stale = [i for r in recs if r["type"] == "frame_dropped" and r["stage"] == "detect" for i in r["frames"]]
    assert len(frames) + len(stale) == capture["frames"] == 15 and frames == sorted(frames)
    assert dropped, "the stream outpaces the pipeline, so frames must have been dropped and reported"
    assert not set(frames) & set(dropped)
    assert sorted(frames + dropped)[:len(frames) + len(dropped)] == list(range(max(frames + dropped) + 1))
    for stage in {r["stage"] for r in recs if r["type"] == "frame_dropped"}:  # capture, and detect (stale frames)
        mine = [r for r in recs if r["type"] == "frame_dropped" and r["stage"] == stage]
        assert mine[-1]["total"] == sum(r["count"] for r in mine)
    assert not [r for r in recs if r["type"] == "frames_lost"]
