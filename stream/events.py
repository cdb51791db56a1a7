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
    """Appends one JSON object per line to `path` (created with its folder; truncated first unless
    `append`); a no-op without a path. With `run`, every record carries it as "run" (after type and ts)."""

    def __init__(self, path: str | None, append: bool = False, run: str | None = None):
        self.file, self.run = None, run
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a" if append else "w", encoding="utf-8", buffering=1)
        self.written = 0

    def write(self, record: dict) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict]) -> None:
        """Several records in one write to the file (a process killed mid-way leaves all or none)."""
        if self.file is not None:
            # JSON has no NaN or inf, at any depth: they become null.
            if self.run is not None:
                records = [{"type": r.get("type"), "ts": r.get("ts"), "run": self.run,
                            **{k: v for k, v in r.items() if k != "run"}} for r in records]
            lines = [json.dumps(json_safe(r), separators=(",", ":"), allow_nan=False) for r in records]
            self.file.write("\n".join(lines) + "\n")
            self.written += len(records)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def read_log(path) -> list[dict]:
    """The records of a JSONL event log so far ([] before it exists); a line still being written is skipped."""
    out: list[dict] = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out
