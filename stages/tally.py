"""What the sink counts for the run as a whole: the run_started and run_summary records, and the status file the CLI's progress bar reads."""
from __future__ import annotations

import json
import os
import time

from owd import __version__
from stages.config import Settings
from stream.sources import save_paths

STATUS_EVERY_S = 0.5


def run_started(settings: Settings) -> dict:
    s = settings
    return {"type": "run_started", "ts": time.time(), "version": __version__, "source": s.capture.source,
            "models": {"detector": s.detect.model, "embedder": s.embed.model,
                       "detector_weights": s.detect.weights, "embedder_weights": s.embed.weights},
            "config_digest": s.digest(), "outputs": outputs(s.sink, s.capture.source)}


def outputs(sink, sources) -> dict:
    """Where the run writes: the event log, the --save path and each source's annotated video."""
    videos = save_paths(sink.save, list(sources)) if sink.save else {}
    return {"events": sink.events, "save": sink.save, "videos": videos}


class Tally:
    """Frames logged, drops, losses and the classes as they stand, from what passes through the sink."""

    def __init__(self, settings: Settings, frames: int = 0):
        self.settings, self.status_path = settings, settings.sink.status
        self.started = time.time()
        self.frames, self.first, self.last = frames, None, None
        self.dropped: dict[str, int] = {}  # stage -> its running total (capture and, live, detect drop)
        self.lost = 0
        self.classes: list[str] = []
        self.failed: list[str] = []  # sources that could not be opened or stopped mid-way (source_failed)
        self.written = 0.0

    def on_event(self, rec: dict) -> None:
        kind, name = rec.get("type"), rec.get("class")
        if kind == "frame_dropped" and isinstance(rec.get("total"), int):
            self.dropped[str(rec.get("stage", ""))] = rec["total"]
        elif kind == "source_failed" and isinstance(rec.get("source"), str) and rec["source"] not in self.failed:
            self.failed.append(rec["source"])
        elif kind == "frames_lost" and isinstance(rec.get("count"), int):
            self.lost += rec["count"]
        elif kind == "class_discovered" and isinstance(name, str) and name not in self.classes:
            self.classes.append(name)
        elif kind == "class_renamed" and rec.get("old") in self.classes:
            self.classes[self.classes.index(rec["old"])] = name
        elif kind in ("class_merged", "class_deleted"):
            gone = rec.get("merged") if kind == "class_merged" else name
            self.classes = [c for c in self.classes if c != gone]

    def on_frame(self, now: float) -> None:
        self.frames += 1
        self.first = self.first or now
        self.last = now

    def counts(self, duplicates: int, rejected: int) -> dict:
        wall = max((self.last or time.time()) - self.started, 1e-9)
        return {"frames": self.frames, "wall_s": round(wall, 3), "fps": round(self.frames / wall, 3),
                "dropped": sum(self.dropped.values()), "lost": self.lost, "duplicates": duplicates,
                "rejected": rejected, "classes": list(self.classes), "failed_sources": list(self.failed)}

    def status(self, duplicates: int, rejected: int, done: bool = False) -> None:
        """At most every STATUS_EVERY_S (and when done): the counts, replaced atomically."""
        now = time.monotonic()
        if not self.status_path or (not done and now - self.written < STATUS_EVERY_S):
            return
        self.written = now
        tmp = f"{self.status_path}.tmp"
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                json.dump({**self.counts(duplicates, rejected), "done": done}, f)
            os.replace(tmp, self.status_path)
        except OSError:
            pass  # the run's folder is gone (the supervisor is ending): nobody reads it any more

    def remove(self) -> None:
        for path in (self.status_path, f"{self.status_path}.tmp") if self.status_path else ():
            try:
                os.unlink(path)
            except OSError:
                pass

    def summary(self, duplicates: int, rejected: int, reason: str) -> dict:
        s = self.settings.sink
        return {"type": "run_summary", "ts": time.time(), **self.counts(duplicates, rejected), "reason": reason,
                "outputs": outputs(s, self.settings.capture.source)}
