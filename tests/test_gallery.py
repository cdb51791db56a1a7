"""Seen classes from a gallery folder, built with the run's embedder into the memory file."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT
from models.sddc import Gate, load_gate, normalize
from stages.config import ConfigError, GateSettings, Settings
from stages.gallery import build, read_gallery


class MeanColor:
    """A stand-in embedder: the mean BGR colour, enough to tell solid-colour images apart."""
    dim = 3

    def embed(self, crops):
        return np.array([c.reshape(-1, 3).mean(axis=0) for c in crops], np.float32)


def make_gallery(root, colors: dict) -> None:
    rng = np.random.default_rng(0)
    for name, bgr in colors.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            image = np.clip(np.array(bgr) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i}.png"), image)
    (root / "empty").mkdir()


def test_gallery_classes_label_new_examples(tmp_path):
    make_gallery(tmp_path / "g", {"red_thing": (0, 0, 220), "green_thing": (0, 200, 0)})
    classes = read_gallery(tmp_path / "g")
    assert sorted(classes) == ["green_thing", "red_thing"] and len(classes["red_thing"]) == 4
    gate = Gate.empty(3)
    assert build(gate, MeanColor(), classes, alpha=1.0) == ["green_thing", "red_thing"]
    probe = normalize(MeanColor().embed([classes["red_thing"][0], classes["green_thing"][1],
                                         np.full((8, 8, 3), (200, 0, 0), np.uint8)]))  # alpha 1: members are inside
    assert gate.labels(gate.classify(probe)[0]) == ["red_thing", "green_thing", "unseen"]
    build(gate, MeanColor(), {"red_thing": classes["red_thing"]}, alpha=1.0)  # rebuilt, not duplicated
    assert sorted(gate.names) == ["green_thing", "red_thing"]
    assert gate.center is not None  # two seen classes: the gate is centred on them (gate.centre)
    uncentred = Gate.empty(3)
    build(uncentred, MeanColor(), classes, alpha=1.0, centre=False)
    assert uncentred.center is None


def test_bad_gallery_folders(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        read_gallery(tmp_path / "missing")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.png").write_bytes(b"broken")
    with pytest.raises(ConfigError, match="no <class name>/ subfolder"):
        read_gallery(tmp_path)


def test_gallery_command_writes_memory_and_examples(tmp_path):
    make_gallery(tmp_path / "g", {"red_thing": (0, 0, 220), "green_thing": (0, 200, 0)})
    memory = tmp_path / "m.npz"
    settings = Settings(gate=GateSettings(memory=str(memory)))
    result = subprocess.run([sys.executable, "-m", "stages.gallery", str(tmp_path / "g")], cwd=ROOT,
                            input=settings.to_json().encode(), capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    gate = load_gate(memory)
    assert sorted(gate.names) == ["green_thing", "red_thing"] and gate.centroids.shape[1] == 1280
    assert len(list((tmp_path / "m.npz.crops" / "red_thing").glob("*.png"))) == 4
