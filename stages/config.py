"""Typed pipeline settings loaded from YAML: one dataclass per stage, unknown keys and bad values are errors."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from models.registry import ModelError
from models.runtimes import check as check_runtime
from owd.errors import OwdError
from stream.topology import ENDPOINT_NAMES


class ConfigError(OwdError, ValueError):
    """A config file or override that cannot be used; the message names the key."""


# Ranges of numeric settings, checked at load: field(default=..., metadata=between(0, 1)).
def at_least(low: float) -> dict:
    return {"range": (low, None)}


def between(low: float, high: float) -> dict:
    return {"range": (low, high)}


def above(low: float) -> dict:
    """Strictly greater than low (timeouts, periods)."""
    return {"above": low}


Runtime = Literal["auto", "torch", "openvino", "onnxruntime", "opencv"]  # models/runtimes.py RUNTIMES


@dataclass(frozen=True)
class CaptureSettings:
    source: list[str] = field(default_factory=list)  # one or more; several: files and folders, taken in turn
    mode: Literal["auto", "file", "live"] = "auto"  # auto: files and folders are file mode, cameras/URLs live
    max_frames: int = field(default=0, metadata=at_least(0))  # stop after this many frames; 0 = whole source
    reconnect_s: float = field(default=10.0, metadata=above(0))  # a live source silent this long ends the stream


@dataclass(frozen=True)
class DetectSettings:
    model: str = "ssd_mobilenet_v2"
    weights: str | None = None   # None = the model's packaged or cached weights
    device: str = "cpu"
    batch_size: int = field(default=4, metadata=at_least(1))         # frames per detector call
    batch_timeout_ms: int = field(default=20, metadata=at_least(0))  # wait at most this long to fill a batch
    score_threshold: float = field(default=0.4, metadata=between(0, 1))
    min_box: int = field(default=12, metadata=at_least(0))  # boxes narrower or shorter than this (pixels) are dropped
    nms_iou: float = field(default=0.7, metadata=between(0, 1))  # class-agnostic NMS: of boxes overlapping more than
    #                                                             this (IoU), the best-scoring stays; 1 = off
    threads: int = field(default=1, metadata=at_least(0))   # 0 = the libraries' default
    runtime: Runtime = "auto"    # auto: the fastest installed one, measured once per CPU (models/runtimes.py)
    options: dict[str, Any] = field(default_factory=dict)  # passed to the model factory
    # Class-agnostic proposals beside the confident boxes (models/proposals.py); the gate keeps those it can explain.
    # On by default since the sixth session: objects no COCO class names get boxes while they move in a fixed
    # camera's view (open-world benchmark: recall 0.88-0.89, 0.28-0.39 false boxes a frame; docs/open-world.md);
    # demo clip: 1.18x the wall time, 1.28x the CPU of detector boxes alone. false = the confident boxes only.
    proposals: bool = True
    proposal_score: float = field(default=0.1, metadata=between(0, 1))  # detector boxes of any class from this
    #                                                                    score up to score_threshold are proposals
    proposal_iou: float = field(default=0.5, metadata=between(0, 1))  # class-agnostic NMS over all boxes
    max_proposals: int = field(default=20, metadata=at_least(0))      # low-score proposals per frame, best first
    motion: Literal["auto", "on", "off"] = "auto"  # background-subtraction regions; auto: while frame
    #                                                 registration measures the view as still
    motion_history: int = field(default=2000, metadata=at_least(1))  # MOG2 history (frames); a stopped object
    #                                                                  stays foreground about history/10 frames
    workers: int = field(default=1, metadata=between(1, 64))  # local detect processes (more may join: --only detect)


@dataclass(frozen=True)
class EmbedSettings:
    model: str = "efficientnet_lite0"
    weights: str | None = None
    device: str = "cpu"
    batch_frames: int = field(default=4, metadata=at_least(1))  # frames whose crops are embedded in one call
    batch_timeout_ms: int = field(default=20, metadata=at_least(0))
    threads: int = field(default=1, metadata=at_least(0))
    runtime: Runtime = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    workers: int = field(default=1, metadata=between(1, 64))  # local embed processes (more may join: --only embed)
    # The updated box predictor (models/search.py, docs/box-predictor.md): per frame one more pass of the embedder's
    # network over the whole frame, windows ranked by what each discovered class's boxes look like in that map,
    # the best embedded like any box (origin "proposal", det_label "search": the gate keeps those it sees as a
    # class). Finds still objects of discovered classes no detector box covers; off by default (cost below).
    search: bool = False
    search_per_class: int = field(default=4, metadata=between(1, 64))  # windows per class and frame, best first
    search_limit: int = field(default=30, metadata=between(1, 1024))   # ... and at most this many per frame
    search_scale: float = field(default=1.0, metadata=between(0.25, 4))  # frame scale for that pass
    search_refine: int = field(default=0, metadata=between(0, 4))  # rounds moving each window near a class (within
    #                                                   1.25 radii) towards its centroid: 8 more crops per window a round
    search_snap: bool = True  # each window snapped to the object inside it (GrabCut, models/snap.py) before it is embedded


@dataclass(frozen=True)
class GateSettings:
    alpha: float = field(default=0.75, metadata=between(0, 1))  # radius = alpha-quantile of member distances (SKZC)
    set_size: int = field(default=7, metadata=at_least(1))      # classes per embedding set (SKZC)
    radius_pool: float = field(default=0.0, metadata=between(0, 1))  # radii shrunk this share towards the
    #                                                  classes' median (0 = the paper's own radius per class)
    centre: bool = True          # measure on embeddings centred on the seen classes' mean (CL2N), set when seen
    #                              classes are built (gallery, evaluate.py); false = the paper's uncentred gate
    memory: str | None = None    # class memory file loaded at start
    track: bool = True           # track boxes (ByteTrack) and vote labels per track
    vote_window: int = field(default=15, metadata=at_least(1))  # decisions per track the vote looks at
    vote_min: int = field(default=3, metadata=at_least(1))      # ... needs at least this many
    vote_share: float = field(default=0.6, metadata=between(0, 1))  # ... and this share for the majority label
    thumb: int = field(default=128, metadata=between(1, 1024))  # longest side (px) of the example crops sent to
    #                                                               clustering (aspect kept, smaller ones as they are)
    persist: int = field(default=5, metadata=at_least(1))  # frames a track needs before a motion box on it is
    #                                                        kept (shorter: a flicker, dropped; a low-score proposal
    #                                                        is kept only when seen as a class)
    steady: int = field(default=3, metadata=at_least(0))  # frames in a row a motion track's box must keep place
    #                                                       and size before it is kept; proposal/motion boxes feed
    #                                                       clustering only from such steady tracks
    reorder_frames: int = field(default=64, metadata=between(1, 4096))  # file mode: frames held per source to put
    #                                                               them back in order (workers finish out of order);
    #                                                               past this a missing frame is skipped, counted
    reorder_s: float = field(default=60.0, metadata=above(0))     # ... or once the oldest held frame waited this long


@dataclass(frozen=True)
class ClusterSettings:
    """No knob here is a distance or a similarity: ranks, counts, shares and a resolution, so one default
    serves every embedder and domain (models/discovery.py)."""
    buffer_size: int = field(default=2000, metadata=at_least(1))  # unseen embeddings kept; the oldest go first
    period_s: float = field(default=2.0, metadata=at_least(0))    # live sources: cluster at most this often
    # file sources (not live): a round after every `period_frames` frames of a source, the gate waiting for its
    # classes, so a run of the same file is repeatable (0: wall-clock rounds as for live sources)
    period_frames: int = field(default=25, metadata=at_least(0))
    round_timeout_s: float = field(default=60.0, metadata=above(0))  # the gate goes on unanswered after this
    min_new: int = field(default=16, metadata=at_least(1))        # ... and only after this many new unseen rows
    k: int = field(default=15, metadata=at_least(1))              # neighbours per row in the kNN graph
    resolution: float = field(default=0.4, metadata=above(0))     # Leiden modularity resolution: <= 0.5 never
    #                                                               splits one Gaussian blob, 1.0 shatters it
    min_size: int = field(default=6, metadata=at_least(2))        # rows a new class needs
    min_tracks: int = field(default=2, metadata=at_least(1))      # ... from this many tracks (untracked rows count one each)
    min_objects: int = field(default=2, metadata=at_least(1))     # ... showing this many distinct objects
    #                                                               (re-tracked look-alikes count once)
    per_track: int = field(default=3, metadata=at_least(0))       # views kept per track, and rows per object in the graph
    anchors: int = field(default=32, metadata=at_least(0))        # newest members per seen class clustered with the buffer
    hold: float = field(default=0.3, metadata=between(0, 1))      # a group holding the most, and more than this share, of a
    #                                                               discovered class's members is that class
    max_members: int = field(default=256, metadata=at_least(2))   # member embeddings kept per class
    restarts: int = field(default=3, metadata=at_least(1))        # Leiden runs per round; the best partition wins
    seed: int = field(default=0, metadata=at_least(0))            # Leiden's and the kNN search's seed
    examples: int = field(default=8, metadata=at_least(0))        # example crops saved per class, to name it
    crops_dir: str | None = None  # where; None = beside the memory file (<memory>.crops/), or nowhere


@dataclass(frozen=True)
class SinkSettings:
    events: str | None = None    # JSONL event log path
    save: str | None = None      # annotated video path (.mp4/.avi)
    headless: bool = False       # no window
    window: str = "owd"
    append: bool = True          # append to an existing events log (`--overwrite`: truncate it first)
    run_id: str | None = None    # stamped on every record as "run"; the CLI makes a fresh one per run
    status: str | None = None    # set by the CLI: a JSON file of the run's counts that its progress bar reads


@dataclass(frozen=True)
class TransportSettings:
    # name -> ipc:// or tcp:// address; None = ipc socket in the run's private temp folder
    endpoints: dict[str, str | None] = field(default_factory=dict)
    hwm: int = field(default=8, metadata=at_least(1))  # queued per socket before PUSH blocks (file) or drops (live)
    shutdown_timeout_s: float = field(default=20.0, metadata=above(0))  # a drain with no frame committed for this
    #                                                               long gives up (lost ones are reported)
    keys: str | None = None      # folder from `owd keys --out DIR`: CurveZMQ for every tcp endpoint
    insecure_tcp: bool = False   # allow tcp endpoints without keys: anyone reaching a port can read and inject
    stall_timeout_s: float = field(default=20.0, metadata=above(0))  # a stage silent this long is restarted
    restart_limit: int = field(default=5, metadata=at_least(0))      # restarts per stage before the run fails
    restart_backoff_s: float = field(default=0.5, metadata=at_least(0))  # first restart's wait; doubles, at most 8 s
    replay_window: int = field(default=64, metadata=at_least(1))     # file mode: frames sent, not yet logged, kept
    #                                                               by capture to replay after a restart
    live_window: int = field(default=2, metadata=at_least(1))        # live mode: frames in flight at once


@dataclass(frozen=True)
class MetricsSettings:
    port: int = field(default=0, metadata=between(0, 65535))  # Prometheus /metrics and /health on 127.0.0.1; 0 = off
    hold_s: float = field(default=0.0, metadata=at_least(0))  # keep serving this long after the run ended (a last
    #                                                           scrape; Ctrl-C ends the wait)


@dataclass(frozen=True)
class Settings:
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    transport: TransportSettings = field(default_factory=TransportSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @property
    def crops_dir(self) -> Path | None:
        """Where each class's example crops go: cluster.crops_dir, else beside the memory file, else nowhere."""
        if self.cluster.crops_dir:
            return Path(self.cluster.crops_dir)
        return memory_crops(self.gate.memory) if self.gate.memory else None

    def digest(self) -> str:
        """Of the settings that decide results: not where outputs go, endpoints or the run's identity."""
        data = dataclasses.asdict(self)
        for key in ("events", "save", "headless", "window", "append", "run_id", "status"):
            data["sink"].pop(key)
        data["gate"].pop("memory")
        data["transport"].pop("endpoints")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        return build(cls, json.loads(text), "")


def memory_crops(memory: str) -> Path:
    """The default example-crop folder of a class memory file: MEMORY.crops/<class>/."""
    return Path(memory + ".crops")


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from a YAML file (None = defaults) with dotted-key overrides ("detect.batch_size": 8)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of stage sections")
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {dotted!r}: {part!r} is not a section")
        node[leaf] = value
    settings = build(Settings, data, "")
    _check_transport(settings.transport)
    for name, s in (("detect", settings.detect), ("embed", settings.embed)):
        try:
            check_runtime(s.model, s.runtime, s.device)
        except ModelError as exc:
            raise ConfigError(f"config key '{name}.runtime': {exc}") from None
    if settings.gate.track and settings.gate.vote_min > settings.gate.vote_window:
        raise ConfigError(f"config key 'gate.vote_min' ({settings.gate.vote_min}) must not exceed 'gate.vote_window' "
                          f"({settings.gate.vote_window}): no track could ever be labelled")
    if settings.transport.keys:  # stages run elsewhere (cwd, host): the folder must not depend on ours
        settings = dataclasses.replace(settings, transport=dataclasses.replace(
            settings.transport, keys=str(Path(settings.transport.keys).expanduser().absolute())))
    return settings


def _check_transport(t: TransportSettings) -> None:
    """Endpoints are ipc:// or tcp://; tcp needs CurveZMQ keys unless insecure_tcp says otherwise."""
    for name, address in t.endpoints.items():
        where = f"config key 'transport.endpoints.{name}'"
        if name not in ENDPOINT_NAMES:
            raise ConfigError(f"{where} is unknown; known: {', '.join(ENDPOINT_NAMES)}")
        if address is None:
            continue
        if not address.startswith(("ipc://", "tcp://")) or address.startswith("ipc://@"):  # @: no file, no permissions
            raise ConfigError(f"{where} must be ipc://PATH or tcp://HOST:PORT, got {address!r}")
        if address.startswith("tcp://") and not t.keys and not t.insecure_tcp:
            raise ConfigError(f"{where} is tcp but 'transport.keys' is unset: make keys with `owd keys "
                              f"--out DIR` and set transport.keys=DIR (or transport.insecure_tcp=true)")


def build(cls, data: Any, prefix: str):
    """Instantiate dataclass cls from a mapping, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<top>'!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"config key {where!r} is unknown; known: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, where)
    out = cls(**kwargs)
    for f in dataclasses.fields(cls):
        _check_range(f, getattr(out, f.name), f"{prefix}{f.name}")
    return out


def _check_range(f: dataclasses.Field, value, where: str) -> None:
    """A field's metadata range ("range": (low, high), None = open; "above": low) against its value."""
    if value is None:
        return
    if "above" in f.metadata and not value > f.metadata["above"]:  # "not >": NaN fails too
        raise ConfigError(f"config key {where!r} must be > {f.metadata['above']}, got {value!r}")
    low, high = f.metadata.get("range", (None, None))
    if (low is not None and not value >= low) or (high is not None and not value <= high):
        wanted = f"in [{low}, {high}]" if low is not None and high is not None else \
            f">= {low}" if low is not None else f"<= {high}"
        raise ConfigError(f"config key {where!r} must be {wanted}, got {value!r}")


def _coerce(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {where!r} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:  # a single value is a list of one
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value if isinstance(value, list) else [value])]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"config key {where!r} must be {getattr(hint, '__name__', hint)}, got {value!r}")
