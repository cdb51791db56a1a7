"""Benchmarks cannot rot: every script imports (default suite) and runs to the end on a tiny input (slow)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT

BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
BIKES = "{bikes}"  # replaced by the bikes.mp4 fixture's path
# Each benchmark's tiniest useful run; a benchmark missing here fails test_every_benchmark_has_a_tiny_run.
TINY = {
    "bench_diffusiondet.py": ["--video", BIKES, "--min-size", "64", "--max-size", "96", "--proposals", "8",
                              "--steps", "1", "--batches", "1", "--threads", "1"],
    "bench_discovery.py": ["--sizes", "300", "--dims", "16", "--classes", "10", "--embeddings", "/nonexistent",
                           "--threads", "1"],
    "bench_nms.py": ["--source", BIKES, "--frames", "4"],
    "bench_openworld.py": ["--empty", "2", "--moving", "4", "--stopped", "2", "--still", "2", "--period", "4",
                           "--search", "--perfect"],
    "bench_pipeline.py": ["--source", BIKES, "--frames", "8"],
    "bench_restart.py": ["--stage", "gate", "--at", "3", "--source", BIKES, "--set", "capture.max_frames=12"],
    "bench_scale_out.py": ["--source", BIKES, "--second", BIKES, "--frames", "6"],
    "bench_student.py": ["--crops", "2", "--seconds", "0.1", "--threads", "1"],
    "bench_search.py": ["--seeds", "0", "--frames", "1", "--moving", "8", "--refine", "1"],
    "bench_transport.py": ["--frames", "20"],
    "replay_clustering.py": ["--source", BIKES, "--cache", "{tmp}/replay.npz", "--max-frames", "30", "--period", "10"],
    "soak_live.py": ["--video", BIKES, "--duration", "6", "--warmup", "2", "--baseline-fps", "0"],
}
NOT_RUN = {  # name -> why there is no tiny run (the import test still covers it)
    "gate_calibration.py": "needs an evaluate.py embedding cache of a labelled image folder",
}


def load(path, monkeypatch):
    """Import a benchmark as `python benchmarks/NAME.py` would: its folder first on sys.path (for
    benchmarks/baseline), the package from the installed checkout (here: pytest's rootdir)."""
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_every_benchmark_imports(path, monkeypatch):
    assert callable(load(path, monkeypatch).main)  # the names it imports from the package still exist


def test_benchmarks_and_tools_need_no_sys_path_edits():
    """They import the installed package (setup.cfg packages, `pip install -e .`), as users' scripts do."""
    allowed = {"bench_openworld.py", "openworld_video.py"}  # still to convert (owned by another change)
    for path in [*BENCHMARKS, *(ROOT / "tools").glob("*.py")]:
        if path.name not in allowed:
            assert "sys.path" not in path.read_text(), path.name


def test_every_benchmark_has_a_tiny_run():
    names = {p.name for p in BENCHMARKS}
    assert names == set(TINY) | set(NOT_RUN), names ^ (set(TINY) | set(NOT_RUN))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_on_a_tiny_input(name, bikes_video, tmp_path):
    args = [a.replace(BIKES, str(bikes_video)).replace("{tmp}", str(tmp_path)) for a in TINY[name]]
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=1200,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, (result.stdout[-1500:], result.stderr[-3000:])
    assert result.stdout.strip(), "a benchmark prints its numbers"
