"""The JSONL event log: record construction, and a writer that flushes every line so `tail -f` works."""
from __future__ import annotations

import json
import time
from pathlib import Path

from stream.messages import Event, json_safe

SCHEMA_PATH = Path(__file__).with_name("events.schema.json")


def event(type_: str, **fields) -> Event:
    return Event({"type": type_, "ts": time.time(), **fields})


class EventLog:
    """Appends one JSON object per line to `path` (created with its folder); a no-op without a path."""

    def __init__(self, path: str | None):
        self.file = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "w", encoding="utf-8", buffering=1)
        self.written = 0

    def write(self, record: dict) -> None:
        if self.file is not None:
            # JSON has no NaN or inf, at any depth: they become null.
            self.file.write(json.dumps(json_safe(record), separators=(",", ":"), allow_nan=False) + "\n")
            self.written += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
