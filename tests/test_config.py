"""Config loading: typed values, errors that name the key; CLI bad input exits 2 with one line."""
from __future__ import annotations

import subprocess
import sys
import tempfile

import dataclasses
import re
import typing

import numpy as np
import pytest

from conftest import ROOT
from models.sddc import Gate, normalize, save_gate
from stages.config import ConfigError, Settings, load


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("detect:\n  batch_size: 8\n  options: {input_size: 320}\ncluster:\n  resolution: 1\n")
    s = load(path, {"detect.batch_size": 2, "capture.source": 0})
    assert s.detect.batch_size == 2 and s.detect.options == {"input_size": 320}
    assert s.cluster.resolution == 1.0 and isinstance(s.cluster.resolution, float)
    assert s.capture.source == ["0"] and s.gate.alpha == 0.75
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


@pytest.mark.parametrize("key, value, words", [
    ("transport.hwm", -1, ">= 1"),            # hung all six stages
    ("transport.hwm", 0, ">= 1"),             # no backpressure at all
    ("gate.alpha", 2, "in [0, 1]"),           # a traceback mid-run
    ("gate.alpha", float("nan"), "in [0, 1]"),
    ("capture.max_frames", -5, ">= 0"),
    ("transport.shutdown_timeout_s", 0, "> 0"),
    ("capture.reconnect_s", -1.0, "> 0"),
    ("detect.batch_size", 0, ">= 1"),
    ("embed.batch_frames", 0, ">= 1"),
    ("detect.score_threshold", 1.5, "in [0, 1]"),
    ("detect.threads", -1, ">= 0"),
    ("gate.vote_share", -0.1, "in [0, 1]"),
    ("gate.set_size", 0, ">= 1"),
    ("cluster.k", 0, ">= 1"),                 # was accepted
    ("cluster.resolution", 0, "> 0"),
    ("cluster.hold", 1.5, "in [0, 1]"),
    ("cluster.min_size", 1, ">= 2"),
])
def test_numbers_out_of_range_name_key_and_range(key, value, words):
    with pytest.raises(ConfigError, match=f"'{key}' must be {re.escape(words)}, got"):
        load(None, {key: value})


def test_every_numeric_setting_has_a_range():
    """A new number without a range is a test failure, not a traceback mid-run."""
    for name, section in typing.get_type_hints(Settings).items():
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            if hints[f.name] in (int, float):
                assert "range" in f.metadata or "above" in f.metadata, f"{name}.{f.name} has no range"


def test_combinations_that_cannot_work(tmp_path):
    with pytest.raises(ConfigError, match="'gate.vote_min' .* must not exceed 'gate.vote_window'"):
        load(None, {"gate.vote_min": 20, "gate.vote_window": 15})
    load(None, {"gate.vote_min": 20, "gate.vote_window": 15, "gate.track": False})  # no votes: fine


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("detect: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *args], capture_output=True, text=True,
                          timeout=600, cwd=tempfile.gettempdir())  # the test's own: a run may make runs/ there


@pytest.mark.parametrize("args, words", [
    (["--source", "/nonexistent/video.mp4"], "does not exist"),
    (["--source", "x.mp4", "--config", "/nonexistent.yaml"], "cannot read config"),
    (["--source", "x.mp4", "--set", "detect.batch_size=many"], "detect.batch_size"),
    (["--source", "x.mp4", "--set", "nokey"], "KEY=VALUE"),
    ([], "no source"),
    (["train-student", "--crops", "/nonexistent", "--out", "/tmp/owd-never.pth"], "is not a folder"),
    (["classes", "list", "--memory", "/nonexistent/m.npz"], "no class memory"),
    (["--source", "x.mp4", "--max-frames", "-5"], "'capture.max_frames' must be >= 0, got -5"),
    (["--source", "x.mp4", "--set", "transport.hwm=-1"], "'transport.hwm' must be >= 1, got -1"),
    (["--source", "x.mp4", "--set", "gate.alpha=2"], "'gate.alpha' must be in [0, 1], got 2.0"),
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


def test_cli_live_mode_on_a_file_is_exit_2(bikes_video):
    result = run_cli("--source", str(bikes_video), "--set", "capture.mode=live", "--headless")
    assert result.returncode == 2 and "capture.mode: live needs a camera index or a URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_memory_of_another_dimension_is_exit_2(bikes_video, tmp_path):
    """A memory made with another embedder is refused before any stage starts (was a traceback mid-run)."""
    path = tmp_path / "m.npz"
    gate = Gate.empty(384)
    gate.add_members("cyclist", normalize(np.random.default_rng(0).normal(size=(5, 384))), 0.75)
    save_gate(gate, path)
    result = run_cli("--source", str(bikes_video), "--memory", str(path), "--headless", "--events",
                     str(tmp_path / "ev.jsonl"))
    assert result.returncode == 2 and "384-d classes but embedder 'efficientnet_lite0' makes 1280-d" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ev.jsonl").exists()  # refused before the stages (the sink makes the log)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    result = run_cli("--source", str(bikes_video), "--memory", str(tmp_path / "broken.npz"), "--headless")
    assert result.returncode == 2 and "gate.memory" in result.stderr and "Traceback" not in result.stderr


def test_embedding_dims_match_the_models(one_thread):
    """The supervisor's torch-free table of embedder widths against the models themselves."""
    from models.efficientnet_lite import EfficientNetLite0
    from models.registry import EMBEDDERS, EMBEDDING_DIMS
    assert sorted(EMBEDDING_DIMS) == EMBEDDERS.names()
    for name in EMBEDDERS.names():
        dim = EfficientNetLite0.dim if name == "efficientnet_lite0" else EMBEDDERS.create(name, weights="random").dim
        assert EMBEDDING_DIMS[name] == dim, name


def test_cli_unopenable_camera_is_exit_2():
    result = run_cli("--source", "rtsp://127.0.0.1:9/none", "--headless", "--set", "transport.shutdown_timeout_s=5")
    assert result.returncode == 2
    assert "cannot open rtsp://127.0.0.1:9/none" in result.stderr and "Traceback" not in result.stderr
