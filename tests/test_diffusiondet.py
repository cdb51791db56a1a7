"""DiffusionDet: tiny random-weight models for behaviour, meta-device R50 for the checkpoint format."""
from __future__ import annotations

import math
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from models.diffusiondet import ARCHS, DiffusionDet, resized_shape
from models.diffusiondet_head import apply_deltas, assign_fpn_levels
from models.diffusiondet_weights import load_upstream_state_dict
from models.registry import DETECTORS, ModelError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
KEYS_TSV = REFERENCE / "diffdet_coco_res50.keys.tsv"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def frames(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def tiny(**options) -> DiffusionDet:
    model = DETECTORS.create("test_diffusiondet", **options)
    # Best-class scores near 0.5 (max logit ~1.2 without bias), so box renewal keeps some proposals
    # and replaces the others.
    with torch.no_grad():
        for stage in model.head.head_series:
            stage.class_logits.bias.fill_(-1.2)
    return model


def same(a, b):
    assert len(a) == len(b)
    # float rounding only (batched matmuls sum in another order): 1e-3 px; a batching bug moves boxes by pixels
    np.testing.assert_allclose(a.xyxy, b.xyxy, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_registered():
    assert {"diffusiondet_r50", "diffusiondet_r101", "test_diffusiondet"} <= set(DETECTORS.names())


def test_detections_shapes_and_ranges():
    model = tiny()
    imgs = frames((120, 160), (90, 70))
    dets = model.detect(imgs, noise=torch.randn(2, 16, 4))
    assert len(dets) == 2 and len(model.class_names) == 80
    for d, img in zip(dets, imgs):
        assert len(d) > 0
        assert d.xyxy.dtype == np.float32 and d.scores.dtype == np.float32 and d.class_ids.dtype == np.int64
        assert np.isfinite(d.xyxy).all() and np.isfinite(d.scores).all()
        h, w = img.shape[:2]
        assert (d.xyxy >= 0).all() and (d.xyxy[:, [0, 2]] <= w).all() and (d.xyxy[:, [1, 3]] <= h).all()
        assert (d.xyxy[:, 2] > d.xyxy[:, 0]).all() and (d.xyxy[:, 3] > d.xyxy[:, 1]).all()
        assert ((d.class_ids >= 0) & (d.class_ids < 80)).all()
        assert (np.diff(d.scores) <= 0).all()


def test_bf16_runs_without_nan():
    d = tiny(precision="bf16").detect(frames((64, 96)), noise=torch.randn(1, 16, 4))[0]
    assert len(d) > 0 and np.isfinite(d.xyxy).all() and np.isfinite(d.scores).all()


@pytest.mark.parametrize("steps", [1, 4])
def test_deterministic_with_noise(steps):
    model = tiny(sampling_steps=steps)
    img = frames((80, 100))
    noise = torch.randn(1, 16, 4)
    same(model.detect(img, noise=noise)[0], model.detect(img, noise=noise)[0])
    other = model.detect(img, noise=torch.randn(1, 16, 4))[0]
    assert len(other) != len(model.detect(img, noise=noise)[0]) or not np.allclose(
        other.xyxy, model.detect(img, noise=noise)[0].xyxy)


def test_seed_option_is_deterministic_and_matches_its_noise():
    img = frames((80, 100))
    a = tiny(seed=7, sampling_steps=2).detect(img)[0]
    b = tiny(seed=7, sampling_steps=2).detect(img)[0]
    noise = torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(7))
    c = tiny(sampling_steps=2).detect(img, noise=noise)[0]
    same(a, b)
    same(a, c)


@pytest.mark.parametrize("steps", [1, 4])
def test_batch_equals_singles(steps):
    model = tiny(sampling_steps=steps)
    kept = []  # proposals surviving renewal, per image, from the last stage's scores
    hook = model.head.head_series[-1].register_forward_hook(
        lambda m, i, out: kept.append((out[0].sigmoid().max(-1).values > 0.5).sum(-1).tolist()))
    imgs = frames((96, 128), (96, 128), (60, 128))  # two share a size, one is batched alone
    noise = torch.randn(3, 16, 4)
    batch = model.detect(imgs, noise=noise)
    hook.remove()
    for i, img in enumerate(imgs):
        same(batch[i], model.detect([img], noise=noise[i:i + 1])[0])
    if steps > 1:
        assert any(0 < k < 16 for step in kept for k in step), "renewal should keep some proposals, not all"


def test_noise_shape_is_checked():
    with pytest.raises(ValueError, match=r"noise must have shape \(1, 16, 4\)"):
        tiny().detect(frames((64, 64)), noise=torch.randn(1, 8, 4))


def test_random_weights_option_builds_without_a_file():
    model = DETECTORS.create("test_diffusiondet", weights="random", num_proposals=8, min_size=48)
    assert model.cfg.num_proposals == 8 and len(model.detect(frames((50, 60)))) == 1


def test_r101_is_r50_with_a_deeper_res4():
    with torch.device("meta"):
        r101 = set(DiffusionDet(ARCHS["r101"]).state_dict())
    r50 = set(meta_r50().state_dict())
    assert r50 < r101
    assert {k.split(".")[3] for k in r101 - r50} == {str(i) for i in range(6, 23)}
    assert all(k.startswith("backbone.bottom_up.res4.") for k in r101 - r50)


def test_unknown_option_is_a_model_error():
    with pytest.raises(ModelError, match="unknown DiffusionDet option.*bogus; valid: num_proposals"):
        DETECTORS.create("test_diffusiondet", bogus=1)


def test_tiny_checkpoint_round_trip(tmp_path):
    model = tiny(sampling_steps=2)
    path = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "iteration": 3}, path)
    loaded = DETECTORS.create("test_diffusiondet", weights=str(path), sampling_steps=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    img, noise = frames((70, 90)), torch.randn(1, 16, 4)
    same(model.detect(img, noise=noise)[0], loaded.detect(img, noise=noise)[0])


def reference_keys() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    if not KEYS_TSV.is_file():
        pytest.skip(f"upstream key list {KEYS_TSV} not present (CI puts shared/ beside the repo)")
    rows = [line.split("\t") for line in KEYS_TSV.read_text().splitlines()[1:]]
    return {k: (tuple(int(n) for n in s.split("x")), getattr(torch, d)) for k, s, d in rows}


def meta_r50() -> DiffusionDet:
    with torch.device("meta"):
        return DiffusionDet(ARCHS["r50"])


def test_r50_state_dict_has_upstream_keys_and_shapes():
    ref = reference_keys()
    ours = {k: (tuple(v.shape), v.dtype) for k, v in meta_r50().state_dict().items()}
    assert ours == ref
    assert sum(math.prod(s) for s, d in ref.values() if d == torch.float32) == pytest.approx(110.8e6, rel=1e-3)


def upstream_like_state(drop_schedule=False) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in reference_keys().items()
            if not (drop_schedule and d == torch.float64)}


def test_strict_load_accepts_upstream_keys_with_or_without_schedule():
    load_upstream_state_dict(meta_r50(), upstream_like_state())
    load_upstream_state_dict(meta_r50(), upstream_like_state(drop_schedule=True))


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("head.head_series.5.bboxes_delta.bias"),
     r"missing keys: head\.head_series\.5\.bboxes_delta\.bias"),
    (lambda sd: sd.__setitem__("head.extra.weight", torch.empty(3, device="meta")),
     r"unexpected keys: head\.extra\.weight"),
    (lambda sd: sd.__setitem__("head.time_mlp.1.bias", torch.empty(7, device="meta")),
     r"shape mismatches .*head\.time_mlp\.1\.bias \(7,\) vs \(1024,\)"),
])
def test_strict_load_names_bad_keys(edit, message):
    sd = upstream_like_state()
    edit(sd)
    with pytest.raises(ModelError, match=message):
        load_upstream_state_dict(meta_r50(), sd)


def test_missing_file_and_offline_download_say_where_to_put_weights(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="nowhere.pth not found.*--weights PATH"):
        DETECTORS.create("diffusiondet_r50", weights=str(tmp_path / "nowhere.pth"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setenv("OWD_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    expected = tmp_path / "diffusiondet" / "diffdet_coco_res50.pth"
    with pytest.raises(ModelError, match=f"place it at {expected}.*--weights PATH"):
        DETECTORS.create("diffusiondet_r50")
    assert not list((tmp_path / "diffusiondet").iterdir())  # no partial file left behind


def test_fpn_level_assignment():
    sides = [224, 112, 111.9, 448, 447, 1000, 10, 0]
    boxes = torch.tensor([[5.0, 5.0, 5.0 + s, 5.0 + s] for s in sides], dtype=torch.float64)
    # floor(4 + log2(side / 224)) clamped to [2, 5], as offsets from p2
    assert assign_fpn_levels(boxes).tolist() == [2, 1, 0, 3, 2, 3, 0, 0]


def test_box_delta_decoding():
    box = torch.tensor([[10.0, 20.0, 50.0, 100.0]])  # w 40, h 80, centre (30, 60)
    # dx, dy are divided by 2: one box width/height of shift; dw = log 2 doubles the width
    deltas = torch.tensor([[2.0, 2.0, math.log(2.0), 0.0]])
    torch.testing.assert_close(apply_deltas(deltas, box), torch.tensor([[30.0, 100.0, 110.0, 180.0]]))
    torch.testing.assert_close(apply_deltas(torch.zeros(1, 4), box), box)
    huge = apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), box)  # dw clamped at log(100000 / 16)
    torch.testing.assert_close(huge[0, 2] - huge[0, 0], torch.tensor(40.0 * 100000 / 16))


@pytest.mark.parametrize("hw, expected", [((720, 1280), (750, 1333)), ((480, 640), (800, 1067)),
                                          ((800, 600), (1067, 800)), ((100, 2000), (67, 1333))])
def test_resize_rule(hw, expected):
    assert resized_shape(*hw, 800, 1333) == expected
