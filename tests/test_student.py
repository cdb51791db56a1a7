"""DINO student embedder, its checkpoint loader, self-distillation and the train-student stage."""
from __future__ import annotations

import argparse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm.models.vision_transformer as timm_vit
import torch

from models.dino_train import DinoConfig, DinoTrainer, MultiCrop, cosine_schedule
from models.registry import EMBEDDERS, ModelError
from models.student import Student, dino_pos_embed, dino_vits16
from models.student import test_vit as tiny_vit  # aliased so pytest does not collect it
from stages import train_student

REFERENCE = Path("/work/shared/reference")
TINY = DinoConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, global_size=32, local_size=16, local_crops=2,
                  lr=2.0, precision="fp32", drop_path_rate=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def random_crops(sizes):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("sizes", [[], [(1, 1)], [(20, 30), (300, 90), (32, 32)]])
def test_embed_shapes(sizes):
    model = EMBEDDERS.create("test_vit", batch_size=2)
    out = model.embed(random_crops(sizes))
    assert out.shape == (len(sizes), model.dim) == (len(sizes), 32)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_registry_lists_dino_variants():
    assert {"dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "test_vit"} <= set(EMBEDDERS.names())


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 16, 16), (3, 3, 64, 40)])
def test_features_shape(shape):
    assert tiny_vit().features(torch.randn(shape)).shape == (shape[0], 32)


def test_cls_equals_timm_forward():
    model = tiny_vit()
    plain = timm_vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                       qkv_bias=True, num_classes=0).eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), plain(x), rtol=0, atol=1e-6)


def test_embed_equals_features_on_normalized_batch():
    model = tiny_vit()
    crop = random_crops([(32, 32)])[0]
    rgb = crop[:, :, ::-1].astype(np.float32)
    x = (rgb - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    with torch.no_grad():
        ref = model.features(torch.from_numpy(x).float().permute(2, 0, 1)[None])
    np.testing.assert_allclose(model.embed([crop]), ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("arch, tsv", [("vit_small_patch16", "dino_deitsmall16.keys.tsv"),
                                       ("vit_base_patch16", "dino_vitbase16.keys.tsv")])
def test_state_dict_has_dino_keys_and_shapes(arch, tsv):
    rows = (REFERENCE / tsv).read_text().splitlines()[1:]
    reference = [tuple(r.split("\t")) for r in rows]
    with torch.device("meta"):
        model = Student(arch)
    ours = [(k, "x".join(map(str, v.shape))) for k, v in model.state_dict().items()]
    assert ours == reference


def test_official_layout_round_trip(tmp_path):
    src = tiny_vit()
    path = tmp_path / "dino_test_pretrain.pth"
    torch.save(src.state_dict(), path)  # plain state dict with DINO's key names
    loaded = Student.from_checkpoint(path, "test_vit")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.features(x), src.features(x))


def test_training_layout_picks_teacher_or_student(tmp_path):
    teacher, student = tiny_vit().state_dict(), Student("test_vit").state_dict()
    head = {"head.mlp.0.weight": torch.zeros(4, 32), "head.last_layer.weight_g": torch.ones(8, 1)}
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
                "student": {**{f"module.backbone.{k}": v for k, v in student.items()},
                            **{f"module.{k}": v for k, v in head.items()}},
                "epoch": 3}, path)
    assert torch.equal(Student.from_checkpoint(path, "test_vit").pos_embed, teacher["pos_embed"])
    assert torch.equal(Student.from_checkpoint(path, "test_vit", key="student").pos_embed, student["pos_embed"])


@pytest.mark.parametrize("edit, named", [
    (lambda s: s.pop("blocks.1.norm1.weight"), "blocks.1.norm1.weight"),
    (lambda s: s.update({"head.weight": torch.zeros(2, 32)}), "head.weight"),
    (lambda s: s.update({"pos_embed": torch.zeros(1, 5, 32)}), "pos_embed (1, 5, 32)"),
])
def test_strict_load_names_bad_keys(tmp_path, edit, named):
    state = tiny_vit().state_dict()
    edit(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Student.from_checkpoint(tmp_path / "bad.pth", "test_vit")


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        tiny_vit(weights=str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="weights_only"):
        tiny_vit(weights=str(tmp_path / "junk.pth"))
    torch.save({"args": argparse.Namespace(lr=1.0), "teacher": tiny_vit().state_dict()}, tmp_path / "obj.pth")
    with pytest.raises(ModelError, match="weights_only"):  # DINO's checkpoint.pth pickles its args
        tiny_vit(weights=str(tmp_path / "obj.pth"))


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("OWD_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr("timm.create_model", offline)
    with pytest.raises(ModelError) as err:
        dino_vits16()
    message = str(err.value)
    assert str(tmp_path / "dino" / "dino_deitsmall16_pretrain.pth") in message
    assert "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth" in message


def test_pos_embed_interpolation():
    pos = torch.randn(1, 197, 384)
    assert dino_pos_embed(pos, 224, 224, 16) is pos  # native grid: unchanged
    small = dino_pos_embed(pos, 112, 112, 16)
    assert small.shape == (1, 50, 384) and torch.equal(small[:, 0], pos[:, 0])
    assert dino_pos_embed(pos, 96, 160, 16).shape == (1, 61, 384)
    flat = torch.ones(1, 197, 8) * torch.arange(8.0)  # bicubic keeps a constant field constant
    torch.testing.assert_close(dino_pos_embed(flat, 112, 112, 16), torch.ones(1, 50, 8) * torch.arange(8.0))
    model = tiny_vit()
    with torch.no_grad():
        assert model.features(torch.randn(2, 3, 16, 16)).shape == (2, 32)  # half the native size, like 112 px
        x = torch.randn(2, 3, 32, 32)  # native size takes the plain path: no resampling
        torch.testing.assert_close(model.features(x), model(x), rtol=0, atol=1e-6)


def test_cosine_schedule():
    s = cosine_schedule(1.0, 0.0, 10, warmup_steps=4)
    assert len(s) == 10 and s[0] == 0.0 and s[4] == 1.0 and s[-1] > 0.0
    assert np.all(np.diff(s[:5]) > 0) and np.all(np.diff(s[4:]) < 0)


def test_multicrop_views():
    views = MultiCrop(TINY)(torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    assert all(v.dtype == torch.float32 for v in views)


def fixed_views(batch=8):
    g = torch.Generator().manual_seed(0)
    return ([torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]
            + [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)])


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    trainer = DinoTrainer(Student("test_vit"), TINY, total_steps=20, batch_size=8)
    views = fixed_views()
    with torch.no_grad():  # start from a settled center so the loss reflects the student matching the teacher
        trainer.loss.center.copy_(trainer.teacher(views[:2]).mean(0, keepdim=True))
    losses = [trainer.step(views)["loss"] for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_teacher_follows_student_by_ema_only():
    trainer = DinoTrainer(Student("test_vit"), TINY, total_steps=10, batch_size=8)
    views = fixed_views()
    for _ in range(2):
        old = [p.detach().clone() for p in trainer.teacher.parameters()]
        m = trainer.step(views)["momentum"]
        assert 0.996 <= m < 1.0
        for p_t, p_s, p_old in zip(trainer.teacher.parameters(), trainer.student.parameters(), old):
            assert not p_t.requires_grad and p_t.grad is None
            torch.testing.assert_close(p_t, m * p_old + (1 - m) * p_s.detach(), rtol=0, atol=1e-6)
    assert any(not torch.equal(p_t, p_s) for p_t, p_s in zip(trainer.teacher.parameters(), trainer.student.parameters()))


# ---- the train-student stage, end to end on a tiny folder -------------------------------------------

def stage_args(tmp_path, **overrides):
    parser = argparse.ArgumentParser()
    train_student.add_arguments(parser)
    init = tmp_path / "init.pth"
    if not init.exists():
        torch.save(tiny_vit().state_dict(), init)
    args = parser.parse_args(["--crops", str(tmp_path / "crops"), "--init", str(init), "--out", str(tmp_path / "out.pth"),
                              "--arch", "test_vit", "--epochs", "1", "--batch-size", "3", "--out-dim", "64",
                              "--head-hidden-dim", "32", "--head-bottleneck-dim", "16", "--global-size", "32",
                              "--local-size", "16", "--local-crops", "2", "--precision", "fp32"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture
def crop_folder(tmp_path):
    (tmp_path / "crops" / "cluster_1").mkdir(parents=True)
    for i, crop in enumerate(random_crops([(24, 40), (50, 30), (16, 16), (64, 64), (30, 30), (40, 20), (33, 33)])):
        sub = "cluster_1/" if i % 2 else ""
        cv2.imwrite(str(tmp_path / "crops" / f"{sub}crop{i}.{'png' if i % 3 else 'jpg'}"), crop)
    (tmp_path / "crops" / "notes.txt").write_text("not an image")
    return tmp_path


def test_stage_trains_resumes_and_output_loads_as_embedder(crop_folder, capsys):
    args = stage_args(crop_folder)
    assert train_student.run(args) == 0
    state = torch.load(args.out, weights_only=True)
    assert state["step"] == 2 and state["epoch"] == 1 and state["images"] == 7  # 7 images // batch 3
    assert "train-student step 2/2" in capsys.readouterr().err
    assert train_student.run(stage_args(crop_folder, epochs=2, resume=True)) == 0
    resumed = torch.load(args.out, weights_only=True)
    assert resumed["step"] == 4 and resumed["epoch"] == 2
    assert not torch.equal(resumed["teacher"]["backbone.pos_embed"], state["teacher"]["backbone.pos_embed"])
    model = EMBEDDERS.create("test_vit", weights=str(args.out))
    assert torch.equal(model.pos_embed, resumed["teacher"]["backbone.pos_embed"])
    assert model.embed(random_crops([(20, 20)])).shape == (1, 32)


def test_stage_resumes_mid_epoch_after_interruption(crop_folder, monkeypatch):
    real_step, calls = DinoTrainer.step, []

    def interrupted(self, views):
        calls.append(len(views[0]))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(self, views)
    monkeypatch.setattr(DinoTrainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_student.run(stage_args(crop_folder, epochs=2, save_every=1))
    assert torch.load(crop_folder / "out.pth", weights_only=True)["step"] == 3  # 2 steps per epoch
    monkeypatch.setattr(DinoTrainer, "step", real_step)
    assert train_student.run(stage_args(crop_folder, epochs=2, resume=True)) == 0
    assert torch.load(crop_folder / "out.pth", weights_only=True)["step"] == 4


@pytest.mark.parametrize("setup, overrides, error, match", [
    (lambda p: None, {"crops": Path("/nonexistent/crops")}, ValueError, "is not a folder"),
    (lambda p: (p / "empty").mkdir(), {"crops": "empty"}, ValueError, "no \\*.png"),
    (lambda p: (p / "junk.pth").write_bytes(b"junk"), {"init": "junk.pth"}, ModelError, "weights_only"),
    (lambda p: torch.save(Student("test_vit").state_dict() | {"x": torch.zeros(1)}, p / "extra.pth"),
     {"init": "extra.pth"}, ModelError, "unexpected keys: x"),
    (lambda p: None, {"init": None}, ValueError, "pass --init"),
    (lambda p: torch.save({"arch": "vit_small_patch16"}, p / "out.pth"), {"resume": True}, ModelError,
     "--arch vit_small_patch16"),
])
def test_stage_bad_input(crop_folder, setup, overrides, error, match):
    setup(crop_folder)
    overrides = {k: crop_folder / v if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(error, match=match):
        train_student.run(stage_args(crop_folder, **overrides))
