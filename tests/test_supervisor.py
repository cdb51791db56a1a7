"""Supervised stages: a stage killed or stopped mid-run is restarted and every frame is logged exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import jsonschema
import pytest
import zmq

from conftest import ROOT
from stages.process import Committed
from stages.sink import read_back
from stages.supervisor import make_run_dir
from stream.events import SCHEMA_PATH, read_log
from stream.messages import EndOfStream
from stream.sockets import open_socket, send
from test_pipeline import alive, assert_nothing_left, owd_dirs

FRAMES = 60



def start(video, events, *extra) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(video), "--headless",
           "--events", str(events), "--max-frames", str(FRAMES), "--set", "transport.restart_backoff_s=0.2", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def wait_for(proc, events, what, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        recs = read_log(events)
        if what(recs):
            return recs
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out; stderr: {proc.communicate()[1][-2000:]}")


def all_started(recs):
    return {r["stage"] for r in recs if r["type"] == "stage_started"} == set(STAGES)


STAGES = ("capture", "detect", "embed", "gate", "cluster", "sink")


def frames_logged(n):
    return lambda recs: all_started(recs) and sum(r["type"] == "frame" for r in recs) >= n


def pid_of(recs, stage) -> int:
    return [r["pid"] for r in recs if r["type"] == "stage_started" and r["stage"] == stage][-1]


def check_complete(proc, events, stage, reason):
    _, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    recs = read_log(events)
    frames = [r["frame"] for r in recs if r["type"] == "frame"]
    assert sorted(frames) == list(range(FRAMES)), "every frame exactly once"
    restarted = [r for r in recs if r["type"] == "stage_restarted"]
    assert [r["stage"] for r in restarted] == [stage] and reason in restarted[0]["reason"]
    capture = next(r for r in recs if r["type"] == "stage_stopped" and r["stage"] == "capture")
    assert capture["frames"] == FRAMES and capture["lost"] == 0
    schema = json.loads(SCHEMA_PATH.read_text())
    for rec in recs:
        jsonschema.validate(rec, schema)
    return recs


@pytest.mark.parametrize("stage", ["detect", "cluster", "sink"])
def test_a_killed_stage_is_restarted_and_nothing_is_lost_or_logged_twice(bikes_video, tmp_path, stage):
    events = tmp_path / "ev.jsonl"
    proc = start(bikes_video, events)
    recs = wait_for(proc, events, frames_logged(8))
    os.kill(pid_of(recs, stage), signal.SIGKILL)
    recs = check_complete(proc, events, stage, "SIGKILL")
    assert_nothing_left(recs, proc.pid)


def test_a_stalled_stage_is_killed_and_restarted_after_the_stall_timeout(bikes_video, tmp_path):
    events = tmp_path / "ev.jsonl"
    proc = start(bikes_video, events, "--set", "transport.stall_timeout_s=8")
    recs = wait_for(proc, events, frames_logged(8))
    pid = pid_of(recs, "embed")
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.time()
    recs = check_complete(proc, events, "embed", "stalled")
    restarted = next(r for r in recs if r["type"] == "stage_restarted")
    assert restarted["old_pid"] == pid
    assert restarted["ts"] - stopped_at >= 8 - 1.5  # its last beat came up to 1 s before the stop
    assert not alive(pid)
    assert_nothing_left(recs, proc.pid)


def test_a_forged_end_of_stream_ends_nothing(bikes_video, tmp_path):
    """Anyone who can reach a socket may send EndOfStream; the supervisor alone ends the run."""
    events = tmp_path / "ev.jsonl"
    proc = start(bikes_video, events)
    wait_for(proc, events, frames_logged(3))
    (run_dir,) = owd_dirs(proc.pid)
    ctx = zmq.Context()
    for name in ("labeled", "events", "unseen"):  # the sockets a stage binds and reads from
        sock = open_socket(ctx, zmq.PUSH, f"ipc://{run_dir}/{name}", bind=False, linger_ms=2000)
        send(sock, EndOfStream("forged", 0))
        sock.close()
    ctx.term()
    _, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    recs = read_log(events)
    assert sorted(r["frame"] for r in recs if r["type"] == "frame") == list(range(FRAMES))
    stopped = {r["stage"]: r for r in recs if r["type"] == "stage_stopped"}
    assert stopped["sink"]["rejected"] >= 2 and stopped["cluster"]["rejected"] >= 1
    assert not [r for r in recs if r["type"] == "stage_restarted"]


def test_killing_the_supervisor_leaves_no_process_folder_or_control_socket(bikes_video, tmp_path):
    events, memory = tmp_path / "ev.jsonl", tmp_path / "classes.npz"
    proc = start(bikes_video, events, "--memory", str(memory))
    recs = wait_for(proc, events, frames_logged(3))
    assert os.path.exists(f"{memory}.ctl")
    proc.kill()
    proc.communicate()
    pids = {r["pid"] for r in recs if r["type"] == "stage_started"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (any(alive(p) for p in pids) or owd_dirs(proc.pid)):
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)], "stages outlived a killed supervisor"
    assert not owd_dirs(proc.pid), f"ipc folder left behind: {[os.listdir(d) for d in owd_dirs(proc.pid)]}"
    assert not os.path.exists(f"{memory}.ctl")


def test_committed_frames_and_a_log_cut_short(tmp_path):
    c = Committed()
    for i in (0, 1, 3, 5):
        c.add(i)
    assert (c.below, c.above, c.high) == (2, {3, 5}, 6) and 3 in c and 4 not in c
    c.merge(3, [7])
    assert (c.below, c.above, c.high) == (4, {5, 7}, 8) and 4 not in c
    c.add(4)
    assert (c.below, c.above) == (6, {7})
    log = tmp_path / "ev.jsonl"
    log.write_text('{"type":"frame","frame":0}\n{"type":"frame","fra')
    assert read_back(str(log)) == [{"type": "frame", "frame": 0}]
    assert log.read_text() == '{"type":"frame","frame":0}\n'  # the torn line is gone before appending


def test_a_drain_that_times_out_says_how_many_frames_it_lost(bikes_video, tmp_path):
    events = tmp_path / "ev.jsonl"
    proc = start(bikes_video, events, "--set", "transport.stall_timeout_s=600", "--set",
                 "transport.shutdown_timeout_s=3", "--set", "gate.reorder_s=1")  # the drain waits both
    recs = wait_for(proc, events, frames_logged(3))
    sink = pid_of(recs, "sink")
    os.kill(sink, signal.SIGSTOP)  # nothing more gets logged
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130
    logged = {r["frame"] for r in read_log(events) if r["type"] == "frame"}
    lost = [line for line in stderr.splitlines() if "frame(s) lost (drain timed out)" in line]
    assert len(lost) == 1 and int(lost[0].split("owd capture: ")[1].split()[0]) >= 1
    assert not alive(sink) and len(logged) < FRAMES


def test_a_run_removes_the_folders_of_runs_whose_supervisor_died(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / f"owd-{dead.pid}-abc", tmp_path / f"owd-{os.getpid()}-abc"
    for folder in (stale, live):
        (folder / "memory.npz.crops").mkdir(parents=True)
    fresh = make_run_dir()
    assert not stale.exists() and live.exists() and os.path.isdir(fresh)
    assert os.stat(fresh).st_mode & 0o777 == 0o700
