"""train-student: adapts the DINO student by self-distillation on a folder of crops saved from a stream."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import torch

from models.dino_train import DinoConfig, DinoTrainer, MultiCrop
from models.registry import ModelError
from models.student import ARCHS, Student, fetch_official, read_checkpoint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crops", required=True, type=Path, help="folder of crop images (*.png, *.jpg; recursive)")
    parser.add_argument("--init", default=None, help="starting checkpoint: an official DINO *_pretrain.pth, a "
                        "train-student output, or 'official' to fetch the arch's DINO weights")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint to write (also the resume point)")
    parser.add_argument("--arch", default="vit_small_patch16", choices=list(ARCHS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate per 256 images (DINO's rule)")
    parser.add_argument("--min-lr", type=float, default=1e-6)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--out-dim", type=int, default=65536, help="prototypes in the projection head")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--local-crops", type=int, default=8)
    parser.add_argument("--freeze-last-layer-epochs", type=float, default=1.0)
    parser.add_argument("--save-every", type=int, default=200, help="also checkpoint every N steps")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("auto", "bf16", "fp32"),
                        help="bf16 autocast trained slower than fp32 on the AVX512-BF16 (no AMX) test machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-hidden-dim", type=int, default=2048, help=argparse.SUPPRESS)  # tiny tests
    parser.add_argument("--head-bottleneck-dim", type=int, default=256, help=argparse.SUPPRESS)


def find_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"--crops {folder} is not a folder; point it at the crop folder the cluster stage "
                         "writes (one image per crop)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"--crops {folder} holds no *.png or *.jpg images; run the pipeline with crop saving "
                         "on, or pass the folder that has them")
    return paths


class CropFolder(torch.utils.data.Dataset):
    """Crop images from disk -> multi-crop views (list of float tensors)."""

    def __init__(self, paths: list[Path], augment: MultiCrop):
        self.paths, self.augment = paths, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        bgr = cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot decode image {self.paths[i]}; delete or re-save it and run again with --resume")
        rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)  # (3, H, W) uint8
        return self.augment(rgb)


def collate(samples: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(views) for views in zip(*samples)]  # V x (B, 3, S, S)


def save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class Progress:
    """One stderr line rewritten in place (tqdm is not a dependency)."""

    def __init__(self, total: int, start: int):
        self.total, self.start, self.t0 = total, start, time.monotonic()

    def update(self, step: int, stats: dict) -> None:
        rate = (step - self.start) / max(time.monotonic() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        sys.stderr.write(f"\rtrain-student step {step}/{self.total} loss {stats['loss']:.4f} "
                         f"lr {stats['lr']:.2e} m {stats['momentum']:.4f} {rate:.2f} it/s eta {eta:.0f}s   ")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    paths = find_images(args.crops)
    if args.batch_size < 1 or args.epochs < 1:
        raise ValueError("--batch-size and --epochs must be at least 1")
    batch_size = min(args.batch_size, len(paths))
    steps_per_epoch = len(paths) // batch_size  # the last partial batch is dropped, as DINO does
    total = steps_per_epoch * args.epochs
    cfg = DinoConfig(out_dim=args.out_dim, hidden_dim=args.head_hidden_dim, bottleneck_dim=args.head_bottleneck_dim,
                     global_size=args.global_size, local_size=args.local_size, local_crops=args.local_crops,
                     lr=args.lr, min_lr=args.min_lr, warmup_steps=round(args.warmup_epochs * steps_per_epoch),
                     freeze_last_layer_steps=round(args.freeze_last_layer_epochs * steps_per_epoch),
                     precision=args.precision)

    resume = args.resume and args.out.is_file()
    state = read_checkpoint(args.out) if resume else None
    if resume:
        if state.get("arch") != args.arch:
            raise ModelError(f"--out {args.out} was trained as {state.get('arch')!r}; pass --arch {state.get('arch')}")
        student = Student(args.arch, drop_path_rate=cfg.drop_path_rate)
    elif args.init is None:
        raise ValueError("pass --init CKPT (an official DINO *_pretrain.pth, a train-student output, or "
                         "'official'), or --resume with an existing --out")
    else:
        if args.init != "official" and not Path(args.init).is_file():
            raise ValueError(f"--init {args.init}: no such checkpoint (an official DINO *_pretrain.pth, a "
                             "train-student output, or 'official')")
        init = fetch_official(args.arch) if args.init == "official" else args.init
        student = Student.from_checkpoint(init, args.arch, drop_path_rate=cfg.drop_path_rate)
    trainer = DinoTrainer(student.to(args.device), cfg, total, batch_size)
    if resume:
        try:
            trainer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelError(f"--out {args.out} is not a resumable train-student checkpoint ({exc}); "
                             "drop --resume or choose another --out") from None

    def checkpoint() -> None:
        save_atomic({**trainer.state_dict(), "arch": args.arch, "epoch": trainer.step_count // steps_per_epoch,
                     "images": len(paths)}, args.out)

    data = CropFolder(paths, MultiCrop(cfg))
    progress = Progress(total, trainer.step_count)
    try:
        while trainer.step_count < total:
            epoch, done = divmod(trainer.step_count, steps_per_epoch)
            order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(args.seed + epoch))
            order = order[done * batch_size:steps_per_epoch * batch_size].tolist()  # resume mid-epoch
            loader = torch.utils.data.DataLoader(data, batch_size, sampler=order, drop_last=True,
                                                 num_workers=args.workers, collate_fn=collate)
            for views in loader:
                stats = trainer.step([v.to(args.device) for v in views])
                progress.update(trainer.step_count, stats)
                if args.save_every and trainer.step_count % args.save_every == 0:
                    checkpoint()
            checkpoint()
    finally:
        progress.close()
    return 0
