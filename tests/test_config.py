"""Config loading: typed values, errors that name the key; CLI bad input exits 2 with one line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from stages.config import ConfigError, Settings, load


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("detect:\n  batch_size: 8\n  options: {input_size: 320}\ncluster:\n  min_similarity: 1\n")
    s = load(path, {"detect.batch_size": 2, "capture.source": 0})
    assert s.detect.batch_size == 2 and s.detect.options == {"input_size": 320}
    assert s.cluster.min_similarity == 1.0 and isinstance(s.cluster.min_similarity, float)
    assert s.capture.source == "0" and s.gate.alpha == 0.75
    assert Settings.from_json(s.to_json()) == s


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load(path)


@pytest.mark.parametrize("text, key", [
    ("detect:\n  batchsize: 8\n", "detect.batchsize"),
    ("detect:\n  batch_size: eight\n", "detect.batch_size"),
    ("detect:\n  batch_size: true\n", "detect.batch_size"),
    ("capture:\n  mode: sometimes\n", "capture.mode"),
    ("sink: 3\n", "sink"),
    ("gate:\n  alpha: [1]\n", "gate.alpha"),
    ("transport:\n  endpoints: {frame: 'tcp://x:1'}\n", "transport.endpoints.frame"),
    ("nonsense: {}\n", "nonsense"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load(path)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("detect: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("args, words", [
    (["--source", "/nonexistent/video.mp4"], "does not exist"),
    (["--source", "x.mp4", "--config", "/nonexistent.yaml"], "cannot read config"),
    (["--source", "x.mp4", "--set", "detect.batch_size=many"], "detect.batch_size"),
    (["--source", "x.mp4", "--set", "nokey"], "KEY=VALUE"),
    ([], "no source"),
    (["train-student", "--crops", "/nonexistent", "--out", "/tmp/owd-never.pth"], "is not a folder"),
    (["classes", "list", "--memory", "/nonexistent/m.npz"], "no class memory"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, words):
    result = run_cli(*args)
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_cli_unknown_model_and_missing_weights(bikes_video, tmp_path):
    result = run_cli("--source", str(bikes_video), "--detector", "yolo9000")
    assert result.returncode == 2 and "unknown detector 'yolo9000'" in result.stderr
    assert "ssd_mobilenet_v2" in result.stderr  # the known ones are listed
    result = run_cli("--source", str(bikes_video), "--embedder-weights", str(tmp_path / "none.pth"))
    assert result.returncode == 2 and "embed.weights" in result.stderr


def test_cli_bad_gallery(bikes_video, tmp_path):
    result = run_cli("--source", str(bikes_video), "--gallery", str(tmp_path / "none"))
    assert result.returncode == 2 and "gallery" in result.stderr and "Traceback" not in result.stderr


def test_cli_unopenable_camera_is_exit_2():
    result = run_cli("--source", "rtsp://127.0.0.1:9/none", "--headless", "--set", "transport.shutdown_timeout_s=5")
    assert result.returncode == 2
    assert "cannot open rtsp://127.0.0.1:9/none" in result.stderr and "Traceback" not in result.stderr
