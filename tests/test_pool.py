"""Worker pools, several sources and /metrics on real runs: order restored, every frame once, counts as logged."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT
from stream.events import read_log
from test_pipeline import assert_nothing_left
from test_stage_process import free_tcp_ports

TIMESTAMPS = {"ts", "capture_ts", "latency_s", "run"}  # and the run id, new each run
NO_DISCOVERY = ["--set", "cluster.min_new=1000000"]  # discovery runs on wall-clock periods: keep labels comparable


def run(video, events, *extra, timeout=400) -> list[dict]:
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(video), "--headless",
           "--events", str(events), *extra]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_log(events)


def frame_and_detection_records(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMESTAMPS} for r in recs if r["type"] in ("frame", "detection")]


def tcp_endpoints() -> list[str]:
    names = ["frames", "detections", "to_embed", "embeddings"]
    return [arg for name, port in zip(names, free_tcp_ports(len(names)))
            for arg in ("--set", f"transport.endpoints.{name}=tcp://127.0.0.1:{port}")]


def test_two_detect_workers_over_tcp_log_what_one_worker_logs_in_order(bikes_video, tmp_path):
    # enough frames that the second worker, joining once its model is warm, still finds work
    common = ["--max-frames", "96", "--set", "transport.insecure_tcp=true", *NO_DISCOVERY]
    one = run(bikes_video, tmp_path / "one.jsonl", *common, *tcp_endpoints())
    two = run(bikes_video, tmp_path / "two.jsonl", *common, *tcp_endpoints(), "--set", "detect.workers=2")
    frames = [r["frame"] for r in two if r["type"] == "frame"]
    assert frames == list(range(96)), "every frame once, in order"
    assert frame_and_detection_records(two) == frame_and_detection_records(one)  # tracks and votes included
    detect = [r for r in two if r["type"] == "stage_stopped" and r["stage"] == "detect"]
    assert len(detect) == 2 and all(r["frames"] > 0 for r in detect), "both workers took frames"
    assert sum(r["frames"] for r in detect) == 96


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return reply.read().decode()


def sample(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.index("}") + 1]))
            if got == {**got, **labels}:
                return float(line.rsplit(" ", 1)[1])
    return None


def test_two_sources_log_every_frame_of_both_once_and_metrics_match_the_log(bikes_video, vtest_video, tmp_path):
    events, port = tmp_path / "ev.jsonl", free_tcp_ports(1)[0]
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(bikes_video), "--source", str(vtest_video),
           "--headless", "--events", str(events), "--max-frames", "20", "--set", "detect.workers=2",
           "--set", f"metrics.port={port}", "--set", "metrics.hold_s=120"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        during, health = None, None
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = json.loads(scrape(port, "/health"))
                text = scrape(port)
            except OSError:
                time.sleep(0.5)
                continue
            if sample(text, "owd_frames_total", stage="sink") and during is None:
                during = text  # scraped while frames were still flowing
            if not health["running"]:
                break
            time.sleep(0.5)
        assert health is not None and not health["running"] and health["exit"] == 0, proc.stderr.read()[-3000:]
        final = scrape(port)
        proc.send_signal(signal.SIGINT)  # ends the hold
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    recs = read_log(events)
    for source in (str(bikes_video), str(vtest_video)):
        frames = [r["frame"] for r in recs if r["type"] == "frame" and r["source"] == source]
        assert frames == list(range(20)), f"{source}: every frame once, in order"
        assert sample(final, "owd_frames_total", stage="sink", source=source) == 20
        assert sample(final, "owd_frames_total", stage="capture", source=source) == 20
        assert sample(final, "owd_latency_seconds_count", stage="sink", source=source) == 20
    assert during is not None, "no scrape while frames flowed"
    assert sample(final, "owd_restarts_total", stage="detect") == 0
    assert sample(final, "owd_inference_seconds_count", stage="detect") > 0
    assert set(health["stages"]) == {"capture", "detect", "detect#1", "embed", "gate", "cluster", "sink"}
    assert_nothing_left(recs, proc.pid)


def test_a_detect_worker_started_with_only_joins_a_running_pipeline(bikes_video, tmp_path):
    events, port = tmp_path / "ev.jsonl", free_tcp_ports(1)[0]
    names = ["frames", "detections", "to_embed", "embeddings", "labeled", "unseen", "classes", "events", "control",
             "stats"]
    endpoints = [arg for name, p in zip(names, free_tcp_ports(len(names)))
                 for arg in ("--set", f"transport.endpoints.{name}=tcp://127.0.0.1:{p}")]
    common = [sys.executable, str(ROOT / "run_pipeline.py"), "--set", "transport.insecure_tcp=true", *endpoints]
    main = subprocess.Popen([*common, "--source", str(bikes_video), "--headless", "--events", str(events),
                             "--max-frames", "60", "--set", f"metrics.port={port}", "--set", "metrics.hold_s=120",
                             "--set", "transport.replay_window=8"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    joined = subprocess.Popen([*common, "--only", "detect"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        health = None
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and main.poll() is None:
            try:
                health = json.loads(scrape(port, "/health"))
            except OSError:
                health = None
            if health is not None and not health["running"]:
                break
            time.sleep(0.5)
        assert health is not None and health["exit"] == 0, main.stderr.read()[-3000:]
        final = scrape(port)
        main.send_signal(signal.SIGINT)
        assert main.wait(timeout=60) == 0
    finally:
        for proc in (main, joined):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    frames = [r["frame"] for r in read_log(events) if r["type"] == "frame"]
    assert sorted(frames) == list(range(60)) and frames == sorted(frames)
    detectors = [float(line.rsplit(" ", 1)[1]) for line in final.splitlines()
                 if line.startswith('owd_process_frames{') and 'stage="detect"' in line]
    assert len(detectors) == 2 and all(n > 0 for n in detectors), final  # the joined worker took frames too
    assert sum(detectors) == 60


def test_the_log_stays_in_order_per_source_when_the_sink_restarts(bikes_video, vtest_video, tmp_path):
    """A killed sink loses the frames queued to it; capture replays them behind their successors (without
    the sink's order guard frame 7 was logged before 6); the restarted sink holds a source's later frames
    until they come, so each source's frame records stay in index order, each once. (A killed gate kept the
    order even without the guard: the new gate gathers its first frames for a second.)"""
    stage = "sink"
    from test_supervisor import frames_logged, pid_of, wait_for
    events, n = tmp_path / "ev.jsonl", 40
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(bikes_video), "--source", str(vtest_video),
           "--headless", "--events", str(events), "--max-frames", str(n), "--set", "transport.restart_backoff_s=0.2",
           "--set", "detect.batch_size=1", *NO_DISCOVERY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        recs = wait_for(proc, events, frames_logged(12), timeout=400)
        os.kill(pid_of(recs, stage), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    recs = read_log(events)
    assert [r["stage"] for r in recs if r["type"] == "stage_restarted"] == [stage]
    for source in (str(bikes_video), str(vtest_video)):
        frames = [r["frame"] for r in recs if r["type"] == "frame" and r["source"] == source]
        assert frames == list(range(n)), f"{source}: every frame once, in order"
