"""Counters, gauges and histograms a stage keeps for the supervisor's /metrics, read as one JSON-able snapshot."""
from __future__ import annotations

import bisect
import threading

# Histogram upper bounds (seconds) by name; a value above the last lands in +Inf only.
BUCKETS = {
    "latency": (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),   # capture -> sink
    "inference": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),  # one model call (a batch)
}


class Stats:
    """What one stage process counted since it started, by name and source ("" = no source).
    Thread-safe: the stage's loop writes, a sender thread takes snapshots."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[str, dict[str, float]] = {}
        self.gauges: dict[str, dict[str, float]] = {}
        self.hists: dict[str, dict[str, list[float]]] = {}  # name -> source -> bucket counts..., +Inf, sum

    def inc(self, name: str, by: float = 1, source: str = "") -> None:
        with self._lock:
            row = self.counters.setdefault(name, {})
            row[source] = row.get(source, 0) + by

    def total(self, name: str, value: float, source: str = "") -> None:
        """A counter kept elsewhere (e.g. an inbox's rejects), reported as it stands."""
        with self._lock:
            self.counters.setdefault(name, {})[source] = value

    def set(self, name: str, value: float, source: str = "") -> None:
        with self._lock:
            self.gauges.setdefault(name, {})[source] = value

    def observe(self, name: str, value: float, source: str = "") -> None:
        bounds = BUCKETS[name]
        with self._lock:
            row = self.hists.setdefault(name, {}).setdefault(source, [0.0] * (len(bounds) + 2))
            row[bisect.bisect_left(bounds, value)] += 1  # per bucket, not cumulative
            row[-1] += value

    def snapshot(self) -> dict:
        with self._lock:
            return {"counters": {k: dict(v) for k, v in self.counters.items()},
                    "gauges": {k: dict(v) for k, v in self.gauges.items()},
                    "hists": {k: {s: list(r) for s, r in v.items()} for k, v in self.hists.items()}}
