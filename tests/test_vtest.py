"""The issue's done-when run on the whole of vtest.avi (795 frames, ~2 min): `pytest -m slow`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_vtest_end_to_end(vtest_video, tmp_path):
    events = tmp_path / "ev.jsonl"
    result = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(vtest_video),
                             "--headless", "--events", str(events)], cwd=ROOT, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    recs = [json.loads(line) for line in events.read_text().splitlines()]
    frames = [r["frame"] for r in recs if r["type"] == "frame"]
    assert sorted(frames) == list(range(795))
    detections = [r for r in recs if r["type"] == "detection"]
    assert {"person", "car"} <= {r["det_label"] for r in detections}
    discovered = [r for r in recs if r["type"] == "class_discovered"]
    assert discovered
    first = min(r["ts"] for r in discovered)
    names = {r["class"] for r in discovered}
    assert any(r["label"] in names for r in detections if r["ts"] > first)
