"""The supervisor's Prometheus /metrics and /health (127.0.0.1 only): stage snapshots in, one exposition out."""
from __future__ import annotations

import http.server
import json
import threading
import time
from collections import deque

import zmq
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from stages.keys import socket_curve
from stream.messages import Event
from stream.security import Zap
from stream.sockets import Inbox, open_socket
from stream.stats import BUCKETS

HELP = {
    "frames": "frames a stage finished (capture: sent, sink: logged)",
    "dropped_frames": "frames dropped on purpose (live sources: replaced by fresher ones)",
    "rejected": "malformed or unexpected messages a stage refused",
    "reorder_skipped": "frames the gate gave up waiting for (lost with a worker, or never sent)",
    "in_flight_frames": "frames capture sent that the sink has not logged yet: the pipeline's queue depth",
    "reorder_held": "frames the gate holds to restore their source's order",
    "classes_known": "classes the gate labels with",
    "latency": "capture to sink (frame logged), seconds",
    "inference": "one model call on a batch, seconds",
}
_FPS_WINDOW_S = 5.0
_ALIVE_S = 3.0  # a process whose snapshot is older than this is not counted as a worker


def _plus(a, b):
    """A counter or a histogram row (list) added to another (None: nothing yet)."""
    if a is None:
        return list(b) if isinstance(b, list) else b
    return [x + y for x, y in zip(a, b)] if isinstance(b, list) else a + b


class Metrics:
    """Takes every stage's stats snapshot (stats endpoint) and serves the sums per stage and source.
    A restarted process starts counting from 0: the previous one's last counts stay in the sums."""

    def __init__(self, ctx: zmq.Context, settings, children: dict):
        self.settings, self.children = settings, children
        curve = socket_curve(settings, "supervisor", "stats", bind=True)
        self.zap = Zap(ctx) if curve is not None else None
        sock = open_socket(ctx, zmq.PULL, settings.transport.endpoints["stats"], bind=True, hwm=1000, linger_ms=0,
                           curve=curve, zap=self.zap)
        self.inbox = Inbox(sock, "supervisor/stats", (Event,))
        self.lock = threading.Lock()
        self.procs: dict[tuple, dict] = {}  # (stage, host, pid) -> last snapshot, when, whether it was the last
        self.history: deque = deque()        # (time, {(stage, source): frames}) for frames/s
        self.running, self.code = True, None
        self.server = None
        if settings.metrics.port:
            try:
                self.server = http.server.ThreadingHTTPServer(("127.0.0.1", settings.metrics.port), _handler(self))
            except OSError as exc:
                self.close()
                raise OSError(f"metrics.port {settings.metrics.port}: {exc.strerror}") from None
            threading.Thread(target=self.server.serve_forever, daemon=True, name="metrics").start()

    def poll(self) -> None:
        while (msg := self.inbox.recv(0)) is not None or self.inbox.sock.poll(0):
            rec = msg.record if msg is not None else {}
            if rec.get("type") != "stats" or not isinstance(rec.get("counters"), dict):
                continue
            key = (str(rec.get("stage")), str(rec.get("host")), rec.get("pid"))  # one process: a restart is a new one
            with self.lock:
                self.procs[key] = {"last": rec, "seen": time.monotonic(), "final": bool(rec.get("final"))}
                now = time.monotonic()
                self.history.append((now, self._totals("counters").get("frames", {})))
                while len(self.history) > 2 and now - self.history[1][0] > _FPS_WINDOW_S:
                    self.history.popleft()

    def _totals(self, kind: str) -> dict:
        """name -> (stage, source) -> value, summed over processes: counters and histograms over every
        process there was (a restarted stage's counts go on from its predecessor's), gauges over those
        that are running or ended cleanly."""
        out: dict = {}
        for (stage, _, _), proc in self.procs.items():
            if kind == "gauges" and not proc["final"] and time.monotonic() - proc["seen"] > _ALIVE_S:
                continue  # gone without a last word (killed): its gauges no longer hold
            for name, by_source in proc["last"].get(kind, {}).items():
                slot = out.setdefault(name, {})
                for source, value in by_source.items():
                    slot[(stage, source)] = _plus(slot.get((stage, source)), value)
        return out

    def collect(self):
        with self.lock:
            counters, gauges, hists = self._totals("counters"), self._totals("gauges"), self._totals("hists")
            history = list(self.history)
            workers: dict[str, int] = {}
            per_process = GaugeMetricFamily("owd_process_frames", "frames one process of a stage finished so far "
                                            "(how the load spreads over workers and hosts)",
                                            labels=["stage", "process"])
            for (stage, host, pid), proc in self.procs.items():
                if not proc["final"] and time.monotonic() - proc["seen"] < _ALIVE_S:
                    workers[stage] = workers.get(stage, 0) + 1
                frames = proc["last"].get("counters", {}).get("frames", {})
                per_process.add_metric([stage, f"{host}:{pid}"], sum(frames.values()))
        for name, rows in counters.items():
            fam = CounterMetricFamily(f"owd_{name}", HELP.get(name, name), labels=["stage", "source"])
            for (stage, source), value in sorted(rows.items()):
                fam.add_metric([stage, source], value)
            yield fam
        for name, rows in gauges.items():
            fam = GaugeMetricFamily(f"owd_{name}", HELP.get(name, name), labels=["stage", "source"])
            for (stage, source), value in sorted(rows.items()):
                fam.add_metric([stage, source], value)
            yield fam
        for name, rows in hists.items():
            fam = HistogramMetricFamily(f"owd_{name}_seconds", HELP.get(name, name), labels=["stage", "source"])
            for (stage, source), row in sorted(rows.items()):
                bounds, cumulative, buckets = BUCKETS[name], 0, []
                for bound, count in zip([*map(str, bounds), "+Inf"], row[:-1]):
                    cumulative += count
                    buckets.append((bound, cumulative))
                fam.add_metric([stage, source], buckets, row[-1])
            yield fam
        fps = GaugeMetricFamily("owd_frames_per_second", f"frames/s over the last {_FPS_WINDOW_S:.0f} s",
                                labels=["stage", "source"])
        if len(history) >= 2 and history[-1][0] > history[0][0]:
            (t0, old), (t1, new) = history[0], history[-1]
            for key, value in sorted(new.items()):
                fps.add_metric(list(key), (value - old.get(key, 0)) / (t1 - t0))
        yield fps
        pool = GaugeMetricFamily("owd_workers", "processes of a stage reporting now (local and joined)",
                                 labels=["stage"])
        for stage, n in sorted(workers.items()):
            pool.add_metric([stage], n)
        yield pool
        yield per_process
        up = GaugeMetricFamily("owd_stage_up", "1 while the supervisor's process of a stage runs",
                               labels=["stage", "worker"])
        restarts = CounterMetricFamily("owd_restarts", "restarts of a stage's processes", labels=["stage"])
        by_stage: dict[str, int] = {}
        for child in list(self.children.values()):
            up.add_metric([child.stage, str(child.worker)], float(_alive(child)))
            by_stage[child.stage] = by_stage.get(child.stage, 0) + child.attempt
        for stage, n in by_stage.items():
            restarts.add_metric([stage], n)
        yield up
        yield restarts

    def health(self) -> tuple[int, dict]:
        stages = {c.name: {"alive": _alive(c), "done": c.done, "pid": c.proc.pid if c.proc else None,
                           "restarts": c.attempt} for c in list(self.children.values())}
        ok = all(s["alive"] or s["done"] for s in stages.values())
        return (200 if ok else 503), {"running": self.running, "exit": self.code, "stages": stages}

    def finish(self, code: int, interrupted) -> None:
        """The run ended: take the last snapshots, and serve them metrics.hold_s longer (Ctrl-C ends the wait)."""
        time.sleep(0.2)
        self.poll()
        self.running, self.code = False, code
        deadline = time.monotonic() + self.settings.metrics.hold_s
        while self.server is not None and time.monotonic() < deadline and not interrupted():
            self.poll()
            time.sleep(0.1)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.inbox.sock.close(0)
        if self.zap is not None:
            self.zap.close()


def _alive(child) -> bool:
    return child.proc is not None and child.restart_at is None and not child.done and child.proc.poll() is None


def _handler(metrics: Metrics):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] == "/metrics":
                status, body, kind = 200, generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8"
            elif self.path.split("?")[0] == "/health":
                status, doc = metrics.health()
                body, kind = json.dumps(doc).encode(), "application/json"
            else:
                status, body, kind = 404, b"/metrics or /health\n", "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    return Handler
