"""Typed pipeline settings loaded from YAML: one dataclass per stage, unknown keys and bad values are errors."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass(frozen=True)
class CaptureSettings:
    source: str = ""
    mode: Literal["auto", "file", "live"] = "auto"  # auto: files and folders are file mode, cameras/URLs live
    max_frames: int = 0          # stop after this many frames; 0 = whole source
    reconnect_s: float = 10.0    # a live source silent this long ends the stream


@dataclass(frozen=True)
class DetectSettings:
    model: str = "ssd_mobilenet_v2"
    weights: str | None = None   # None = the model's packaged or cached weights
    device: str = "cpu"
    batch_size: int = 4          # frames per detector call
    batch_timeout_ms: int = 20   # wait at most this long to fill a batch
    score_threshold: float = 0.4
    min_box: int = 12            # boxes narrower or shorter than this (pixels) are dropped
    threads: int = 1
    options: dict[str, Any] = field(default_factory=dict)  # passed to the model factory


@dataclass(frozen=True)
class EmbedSettings:
    model: str = "efficientnet_lite0"
    weights: str | None = None
    device: str = "cpu"
    batch_frames: int = 4        # frames whose crops are embedded in one call
    batch_timeout_ms: int = 20
    threads: int = 1
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateSettings:
    alpha: float = 0.75          # class radius = alpha-quantile of member distances (SKZC)
    set_size: int = 7            # classes per embedding set (SKZC)
    memory: str | None = None    # class memory file loaded at start
    track: bool = True           # track boxes (ByteTrack) and vote labels per track
    vote_window: int = 15        # decisions per track the vote looks at
    vote_min: int = 3            # ... needs at least this many
    vote_share: float = 0.6      # ... and this share for the majority label
    thumb: int = 64              # side of the example crops sent to the cluster stage (px)


@dataclass(frozen=True)
class ClusterSettings:
    """No knob here is a distance or a similarity: ranks, counts, shares and a resolution, so one default
    serves every embedder and domain (models/discovery.py)."""
    buffer_size: int = 2000      # unseen embeddings kept; the oldest go first
    period_s: float = 2.0        # cluster at most this often
    min_new: int = 16            # ... and only after this many new unseen embeddings
    k: int = 15                  # neighbours per row in the kNN graph
    resolution: float = 0.5      # Leiden modularity resolution: 0.5 never splits one Gaussian blob, 1.0 shatters it
    min_size: int = 6            # rows a new class needs
    min_tracks: int = 3          # ... from this many tracks (untracked rows count one each)
    min_objects: int = 2         # ... showing this many distinct objects (re-tracked look-alikes count once)
    per_track: int = 3           # views kept per track in the buffer, and rows per object in the graph
    anchors: int = 32            # newest members per known class clustered with the buffer
    hold: float = 0.5            # a group holding more than this share of a class's anchors is that class
    max_members: int = 256       # member embeddings kept per class to recompute centroid and radius
    seed: int = 0                # Leiden's and the kNN search's seed
    examples: int = 8            # example crops saved per class, for a person to name it
    crops_dir: str | None = None  # where; None = beside the memory file (<memory>.crops/), or nowhere


@dataclass(frozen=True)
class SinkSettings:
    events: str | None = None    # JSONL event log path
    save: str | None = None      # annotated video path (.mp4/.avi)
    headless: bool = False       # no window
    window: str = "owd"


@dataclass(frozen=True)
class TransportSettings:
    # name -> ipc:// or tcp:// address; None = ipc socket in the run's private temp folder
    endpoints: dict[str, str | None] = field(default_factory=dict)
    hwm: int = 8                 # messages queued per socket before PUSH blocks (file) or drops (live)
    shutdown_timeout_s: float = 20.0


ENDPOINT_NAMES = ("frames", "detections", "embeddings", "labeled", "unseen", "classes", "events", "control")


@dataclass(frozen=True)
class Settings:
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    detect: DetectSettings = field(default_factory=DetectSettings)
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    transport: TransportSettings = field(default_factory=TransportSettings)

    @property
    def crops_dir(self) -> Path | None:
        """Where each class's example crops go: cluster.crops_dir, else beside the memory file, else nowhere."""
        if self.cluster.crops_dir:
            return Path(self.cluster.crops_dir)
        return memory_crops(self.gate.memory) if self.gate.memory else None

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
    unknown = set(settings.transport.endpoints) - set(ENDPOINT_NAMES)
    if unknown:
        raise ConfigError(f"config key 'transport.endpoints.{sorted(unknown)[0]}' is unknown; "
                          f"known: {', '.join(ENDPOINT_NAMES)}")
    return settings


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
    return cls(**kwargs)


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
