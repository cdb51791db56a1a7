#!/usr/bin/env python3
"""Live soak: a real video served as a paced MJPEG HTTP stream on loopback, latency over time and every process's RSS.

    python benchmarks/soak_live.py [--video vtest.avi] [--fps 30] [--duration 180] [--warmup 60]
                                   [--baseline-fps 2 --baseline-duration 40] [--set KEY=VALUE ...]

Ours: the pipeline on a --fps stream for --duration seconds. Baseline: the same pipeline on a stream
slow enough that no frame ever waits (--baseline-fps), so its latency is the per-frame processing time.
Prints latency p50/p99 per window, frames logged and dropped, and each process's RSS after warm-up
and at the end. The 30-minute soak: --duration 1800 --warmup 120.
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from stream.events import read_log

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def mjpeg_server(video: str, fps: float) -> tuple[http.server.HTTPServer, str]:
    """Serves the video, looped, as multipart/x-mixed-replace JPEGs at `fps` (what IP cameras do)."""
    cap = cv2.VideoCapture(video)
    jpegs = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        jpegs.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    cap.release()
    if not jpegs:
        sys.exit(f"soak_live: cannot read {video}")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            start, i = time.monotonic(), 0
            try:
                while True:
                    jpeg = jpegs[i % len(jpegs)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                                     + jpeg + b"\r\n")
                    i += 1
                    time.sleep(max(start + i / fps - time.monotonic(), 0))
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/stream.mjpg"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out



def soak(video: str, fps: float, duration: float, warmup: float, extra: list[str], label: str) -> dict:
    server, url = mjpeg_server(video, fps)
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "ev.jsonl"
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--source", url, "--headless", "--events", str(events)]
        for item in extra:
            cmd += ["--set", item]
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
        names: dict[int, str] = {proc.pid: "supervisor"}
        rss: dict[str, list[tuple[float, float]]] = {}
        started = None
        try:
            while proc.poll() is None:
                time.sleep(2.0)
                recs = read_log(events) if events.exists() else []
                for r in recs:
                    if r["type"] == "stage_started":
                        names[r["pid"]] = r["stage"]
                if started is None and any(r["type"] == "frame" for r in recs):
                    started = time.monotonic()  # models loaded, frames flowing
                if started is None:
                    continue
                t = time.monotonic() - started
                for pid in [proc.pid] + children(proc.pid):
                    mb = rss_mb(pid)
                    if mb is not None and pid in names:
                        rss.setdefault(names[pid], []).append((t, mb))
                if t >= duration:
                    break
        finally:
            proc.send_signal(2)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            server.shutdown()
        recs = read_log(events)
    t0 = min((r["ts"] for r in recs if r["type"] == "frame"), default=0)
    frames = [(r["ts"] - t0, r["latency_s"]) for r in recs if r["type"] == "frame"]
    dropped = max((r["total"] for r in recs if r["type"] == "frame_dropped"), default=0)
    lost = sum(r["count"] for r in recs if r["type"] == "frames_lost")
    steady = [lat for t, lat in frames if t >= warmup] or [lat for _, lat in frames]
    print(f"\n{label}: {len(frames)} frames logged in {frames[-1][0] if frames else 0:.0f} s "
          f"({len(frames) / max(frames[-1][0], 1e-9) if frames else 0:.1f} frames/s), {dropped} dropped at capture, "
          f"{lost} lost")
    window = max(duration / 6, 10)
    for start in np.arange(0, max(t for t, _ in frames) if frames else 0, window):
        lat = [lat for t, lat in frames if start <= t < start + window]
        if lat:
            print(f"  t={start:5.0f}-{start + window:5.0f} s  latency p50 {np.percentile(lat, 50):.3f} s"
                  f"  p99 {np.percentile(lat, 99):.3f} s  ({len(lat)} frames)")
    for name, series in sorted(rss.items()):
        after = [mb for t, mb in series if t >= warmup]
        if len(after) >= 2:
            growth = (after[-1] - after[0]) / after[0] * 100
            print(f"  RSS {name:>10}: {after[0]:7.1f} MB after warm-up -> {after[-1]:7.1f} MB at the end "
                  f"({growth:+.1f} %)")
    return {"p50": float(np.percentile(steady, 50)) if steady else float("nan"),
            "p99": float(np.percentile(steady, 99)) if steady else float("nan"),
            "fps": len(frames) / max(frames[-1][0], 1e-9) if frames else 0.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(VTEST))
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--duration", type=float, default=180.0, help="seconds of frames flowing (after start-up)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before latency and RSS count")
    p.add_argument("--baseline-fps", type=float, default=2.0, help="0: no baseline run")
    p.add_argument("--baseline-duration", type=float, default=40.0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to run_pipeline.py")
    args = p.parse_args()
    if not os.path.exists(args.video):
        sys.exit(f"soak_live: {args.video} does not exist")
    base = None
    if args.baseline_fps:
        base = soak(args.video, args.baseline_fps, args.baseline_duration, 5.0, args.set,
                    f"baseline: {args.baseline_fps:g} fps stream (no frame waits)")
    ours = soak(args.video, args.fps, args.duration, args.warmup, args.set, f"ours: {args.fps:g} fps stream")
    print(f"\nsteady state after {args.warmup:g} s warm-up:")
    if base:
        print(f"  per-frame processing time (baseline p50): {base['p50']:.3f} s")
    times = f" ({ours['p50'] / base['p50']:.1f}x processing time)" if base else ""
    print(f"  latency p50 {ours['p50']:.3f} s{times}, p99 {ours['p99']:.3f} s ({ours['p99'] / ours['p50']:.1f}x p50), "
          f"{ours['fps']:.1f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
