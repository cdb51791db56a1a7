"""`owd run`: settings from the command line, every path made absolute, outputs chosen, checks, then the supervisor."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from models.registry import EMBEDDING_DIMS, ships_weights
from models.sddc import load_gate
from stages.classes import control_endpoint
from stages.config import ENDPOINT_NAMES, ConfigError, Settings, load
from stages.progress import Progress, count_frames
from stages.supervisor import ROOT, Supervisor, make_run_dir, stage_env
from stream.sources import is_live
from stream.topology import LINKS, STAGES as PIPELINE

DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
STAGES = tuple(reversed(PIPELINE))  # consumers first, source last


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML settings (default: configs/default.yaml)")
    p.add_argument("--source", action="append", help="video file, image folder, webcam index (0) or rtsp:// / "
                   "http:// URL; repeat it for several files or folders in one pipeline")
    p.add_argument("--headless", action="store_true", help="no window")
    p.add_argument("--events", help="JSONL event log (appended to; see --overwrite)")
    p.add_argument("--save", help="write the annotated video here (.mp4 or .avi)")
    p.add_argument("--overwrite", action="store_true", help="truncate --events instead of appending to it")
    p.add_argument("--name", default="run", help="without --events and --save, outputs go to a fresh "
                   "runs/NAME, runs/NAME2, … under the current folder (default: run)")
    p.add_argument("--memory", help="class memory file: loaded at start if present, saved as classes appear")
    p.add_argument("--gallery", help="folder DIR/<class name>/*.jpg: seen classes built from example images at start")
    p.add_argument("--detector", help="detector name (see --list-models)")
    p.add_argument("--embedder", help="embedder name (see --list-models)")
    p.add_argument("--weights", help="weights of whichever of detector/embedder is not a packaged model")
    p.add_argument("--detector-weights")
    p.add_argument("--embedder-weights")
    p.add_argument("--device", help="torch device for both models, e.g. cpu or cuda:0")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set detect.batch_size=8 (value parsed as YAML)")
    p.add_argument("--only", choices=STAGES, help="run just this stage here (the others run elsewhere over tcp://)")
    p.add_argument("--list-models", action="store_true", help="print the registered models and exit")


def overrides(args: argparse.Namespace, config: Settings) -> dict:
    """CLI flags as dotted setting keys; they win over the file."""
    out = {}
    for flag, key in (("source", "capture.source"), ("events", "sink.events"), ("save", "sink.save"),
                      ("memory", "gate.memory"), ("detector", "detect.model"), ("embedder", "embed.model"),
                      ("detector_weights", "detect.weights"), ("embedder_weights", "embed.weights"),
                      ("max_frames", "capture.max_frames")):
        if getattr(args, flag) is not None:
            out[key] = getattr(args, flag)
    if args.headless:
        out["sink.headless"] = True
    if args.overwrite:
        out["sink.append"] = False
    if args.device:
        out["detect.device"] = out["embed.device"] = args.device
    if args.weights:
        detector, embedder = out.get("detect.model", config.detect.model), out.get("embed.model", config.embed.model)
        custom = [stage for stage, model in (("detect", detector), ("embed", embedder))
                  if not ships_weights(model)]
        if len(custom) != 1:
            raise ConfigError("--weights is ambiguous here: use --detector-weights or --embedder-weights")
        out[f"{custom[0]}.weights"] = args.weights
    return {**out, **parse_sets(args.set)}


def parse_sets(items: list[str]) -> dict:
    """--set KEY=VALUE items as dotted keys, each value parsed as YAML."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def absolute(settings: Settings, cwd: Path) -> Settings:
    """Every file setting (from a flag, --set or the config file) resolved against the caller's folder:
    the stages run with the repository as their working directory."""
    def fix(path: str | None, keep: tuple[str, ...] = ()) -> str | None:
        if not path or path in keep:
            return path
        return str((cwd / Path(path).expanduser()).absolute())

    s = settings
    sources = [source if is_live(source) else fix(source) for source in s.capture.source]
    return dataclasses.replace(
        s, capture=dataclasses.replace(s.capture, source=sources),
        detect=dataclasses.replace(s.detect, weights=fix(s.detect.weights, ("random",))),
        embed=dataclasses.replace(s.embed, weights=fix(s.embed.weights, ("random",))),
        gate=dataclasses.replace(s.gate, memory=fix(s.gate.memory)),
        cluster=dataclasses.replace(s.cluster, crops_dir=fix(s.cluster.crops_dir)),
        sink=dataclasses.replace(s.sink, events=fix(s.sink.events), save=fix(s.sink.save)))


def fresh_run_folder(parent: Path, name: str) -> Path:
    """runs/NAME, else runs/NAME2, runs/NAME3, … (Ultralytics' convention): the first that does not
    exist yet. Not created here: a run refused by check() leaves no empty folder behind."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ConfigError(f"--name {name!r}: use 1-64 letters, digits, '.', '-', '_'")
    for i in range(1, 100000):
        folder = parent / (name if i == 1 else f"{name}{i}")
        if not folder.exists():
            return folder
    raise ConfigError(f"{parent} holds too many runs named {name!r}; choose another --name")


def check(settings: Settings) -> None:
    """Mistakes worth catching before six processes start (each raises ConfigError), and the
    folders of the output files."""
    if not settings.capture.source:
        raise ConfigError("no source: pass --source VIDEO|FOLDER|CAMERA_INDEX|URL (--help lists every command)")
    if len(settings.capture.source) > 1 and any(map(is_live, settings.capture.source)):
        raise ConfigError("several sources must all be files or folders (one camera or URL per pipeline for now)")
    if len(set(settings.capture.source)) < len(settings.capture.source):
        raise ConfigError("a source is given twice")
    for source in settings.capture.source:
        if not is_live(source) and not Path(source).exists():
            raise ConfigError(f"source {source!r} does not exist")
        if settings.capture.mode == "live" and not is_live(source):
            raise ConfigError(f"capture.mode: live needs a camera index or a URL; {source!r} is a file (use file or auto)")
    for key, path in (("detect.weights", settings.detect.weights), ("embed.weights", settings.embed.weights)):
        if path and path != "random" and not Path(path).exists():  # "random": untrained weights (benchmarks)
            raise ConfigError(f"{key}: weights file {path} does not exist")
    # Model names are checked by the model stages themselves, so this process never imports torch.
    _check_memory(settings)
    keys = settings.transport.keys
    if keys and not Path(keys).is_dir():
        raise ConfigError(f"transport.keys: {keys} is not a folder (make it with `owd keys --out {keys}`)")
    for path in (settings.sink.events, settings.sink.save, settings.gate.memory):
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the folder for {path}: {exc.strerror}") from None


def _check_memory(settings: Settings) -> None:
    """A class memory file that the stages could not use (unreadable, or of another embedding width
    than the embedder's, which would fail mid-run) is refused now."""
    path = settings.gate.memory
    if not path or not Path(path).exists():
        return
    try:
        gate = load_gate(path)
    except ValueError as exc:
        raise ConfigError(f"gate.memory: {exc}") from None
    dim, model = EMBEDDING_DIMS.get(settings.embed.model), settings.embed.model
    if len(gate) and dim is not None and gate.centroids.shape[1] != dim:
        raise ConfigError(f"gate.memory: {path} holds {gate.centroids.shape[1]}-d classes but embedder {model!r} "
                          f"makes {dim}-d embeddings (use the embedder the memory was made with, or another file)")


def with_endpoints(settings: Settings, run_dir: str) -> Settings:
    """Endpoints left unset become ipc sockets in the run's private folder (removed at exit), but
    for the control socket, which sits beside the class memory file so `classes` commands find it."""
    given = settings.transport.endpoints
    endpoints = {name: given.get(name) or f"ipc://{run_dir}/{name}" for name in ENDPOINT_NAMES}
    if not given.get("stats") and not settings.metrics.port:
        endpoints["stats"] = None  # no /metrics: the stages keep their counts to themselves
    if not given.get("control") and settings.gate.memory:
        endpoints["control"] = control_endpoint(settings.gate.memory)
    return dataclasses.replace(settings, transport=dataclasses.replace(settings.transport, endpoints=endpoints))


def prepare(args: argparse.Namespace, cwd: Path) -> Settings:
    """The run's settings: file, flags, absolute paths, default outputs, a fresh run id."""
    config = str(cwd / args.config) if args.config else None
    settings = load(config)
    settings = absolute(load(config, overrides(args, settings)), cwd)
    if not (settings.sink.events or settings.sink.save or args.only):
        folder = fresh_run_folder(cwd / "runs", args.name)
        settings = dataclasses.replace(settings, sink=dataclasses.replace(
            settings.sink, events=str(folder / "events.jsonl"), save=str(folder / "annotated.mp4")))
    return dataclasses.replace(settings, sink=dataclasses.replace(
        settings.sink, run_id=settings.sink.run_id or uuid.uuid4().hex[:12]))


def _supervise(supervisor: Supervisor) -> int:
    try:
        return supervisor.run()
    except OSError as exc:  # e.g. the metrics port is taken
        print(f"owd: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """OwdError (ConfigError, …) propagates to the CLI: one line, exit 2."""
    if args.list_models:
        from models.registry import DETECTORS, EMBEDDERS
        shown = lambda names: ", ".join(n for n in names if not n.startswith("test_"))  # noqa: E731 (tests' tiny models)
        print("detectors:", shown(DETECTORS.names()))
        print("embedders:", shown(EMBEDDERS.names()))
        return 0
    settings = prepare(args, Path.cwd())
    if args.only:
        needed = [n for n in ENDPOINT_NAMES if not LINKS[n].optional]  # acks: within one supervised run
        missing = [n for n in needed if not settings.transport.endpoints.get(n)]
        if missing:
            raise ConfigError(f"--only needs every endpoint in transport.endpoints; missing: {', '.join(missing)}")
        if args.only == "capture":
            check(settings)
        return _supervise(Supervisor(settings, (args.only,), supervised=False))
    check(settings)
    run_dir = make_run_dir()
    try:
        if not settings.gate.memory:  # the run's classes live in a memory file for this run only,
            settings = dataclasses.replace(settings, gate=dataclasses.replace(  # so a restarted stage finds them
                settings.gate, memory=os.path.join(run_dir, "memory.npz")))
        settings = dataclasses.replace(settings, sink=dataclasses.replace(
            settings.sink, status=os.path.join(run_dir, "status.json")))
        if args.gallery:
            gallery = str((Path.cwd() / args.gallery).absolute())
            code = subprocess.run([sys.executable, "-m", "stages.gallery", gallery], cwd=ROOT,
                                  input=settings.to_json().encode(), env=stage_env()).returncode
            if code:
                return code
        counts = [count_frames(source, settings.capture.max_frames) for source in settings.capture.source]
        progress = Progress(settings, None if None in counts else sum(counts))
        code = _supervise(Supervisor(with_endpoints(settings, run_dir), progress=progress))
        if code == 0 and progress.failed_sources():  # the others ran to the end; the run did not do all it was asked
            code = 1
        progress.finish(code)
        return code
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        for path in (settings.sink.events, settings.sink.save):  # a default run folder that got nothing
            if path and Path(path).parent.parent == Path.cwd() / "runs":
                try:
                    Path(path).parent.rmdir()
                except OSError:
                    pass  # not empty: the run's outputs
