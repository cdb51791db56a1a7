#!/usr/bin/env python3
"""The done-when runs of supervised stages: a stage killed (SIGKILL) or stopped (SIGSTOP) mid-run, what it cost.

    python benchmarks/bench_restart.py --stage detect [--signal KILL|STOP] [--stop-for 60] [--at 200]
                                       [--source vtest.avi] [--set KEY=VALUE ...]

Runs `run_pipeline.py --source SOURCE --headless --events ev.jsonl`, hits the stage's process once
frame `--at` is logged, and prints: exit status, frame records (missing, twice), the restart event,
restart time (signal to the new process's stage_started, models loaded) and wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from stream.events import read_log

ROOT = Path(__file__).resolve().parents[1]
VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=["capture", "detect", "embed", "gate", "cluster", "sink"])
    p.add_argument("--signal", default="KILL", choices=["KILL", "STOP"])
    p.add_argument("--stop-for", type=float, default=60.0, help="STOP: SIGCONT after this many seconds")
    p.add_argument("--at", type=int, default=200, help="hit the stage once this many frames are logged")
    p.add_argument("--source", default=VTEST)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "ev.jsonl"
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", args.source, "--headless",
               "--events", str(events)] + [a for item in args.set for a in ("--set", item)]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        hit_at = pid = None
        while proc.poll() is None:
            time.sleep(0.2)
            recs = read_log(events)
            if hit_at is None and sum(r["type"] == "frame" for r in recs) >= args.at:
                pid = [r["pid"] for r in recs if r["type"] == "stage_started" and r["stage"] == args.stage][-1]
                os.kill(pid, getattr(signal, f"SIG{args.signal}"))
                hit_at = time.time()
            if args.signal == "STOP" and hit_at and time.time() - hit_at > args.stop_for:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                args.signal = "STOP (continued)"
        stderr = proc.stderr.read()
        wall = time.monotonic() - start
        recs = read_log(events)
    frames = Counter(r["frame"] for r in recs if r["type"] == "frame")
    capture = next((r for r in recs if r["type"] == "stage_stopped" and r["stage"] == "capture"), {})
    expected = set(range(capture.get("frames", 0)))
    print(f"exit status {proc.returncode}, wall time {wall:.0f} s")
    print(f"frame records: {len(frames)} distinct of {len(expected)} read, "
          f"missing {sorted(expected - set(frames))[:20]},"
          f" twice {sorted(i for i, n in frames.items() if n > 1)[:20]}, capture lost {capture.get('lost')}")
    for r in recs:
        if r["type"] in ("stage_restarted", "stage_failed", "frames_lost"):
            print(f"  {r['type']}: {json.dumps({k: v for k, v in r.items() if k not in ('type', 'frames')})}")
    restarted = [r for r in recs if r["type"] == "stage_restarted"]
    if hit_at and restarted:
        ready = [r["ts"] for r in recs if r["type"] == "stage_started" and r["stage"] == args.stage
                 and r["pid"] == restarted[0]["pid"]]
        print(f"signal -> restart decided: {restarted[0]['ts'] - hit_at:.1f} s; signal -> new process ready "
              f"(models loaded): {(ready[0] - hit_at) if ready else float('nan'):.1f} s")
    sink = next((r for r in recs if r["type"] == "stage_stopped" and r["stage"] == "sink"), {})
    print(f"sink: {sink.get('frames')} frames written by its last process, "
          f"{sink.get('duplicates')} replayed duplicates skipped")
    if proc.returncode:
        print(stderr[-2000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
