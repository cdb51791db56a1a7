"""The supervisor: starts the stage processes, restarts a crashed or stalled one, and ends the run stage by stage."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from stages.config import Settings
from stages.keys import socket_curve
from stages.lifecycle import ATTEMPT_ENV, HEARTBEAT_ENV, QUIT, STOP_ENV, SUPERVISED_ENV, WORKER_ENV
from stages.metrics import Metrics
from stream.events import event
from stream.sockets import open_socket, send
from stream.topology import STAGES as ORDER, WORKERS  # ORDER: the order in which a run ends

ROOT = Path(__file__).resolve().parents[1]
REPLAYED_AFTER = {"detect", "embed", "gate", "sink"}  # their restart may lose frames in flight


# Model stages keep freed activation buffers instead of returning them to the OS: glibc's default mmaps big
# blocks and trims the heap, so every batch re-faulted its buffers (2-3 k page faults per crop, ~45 % of
# the torch embedder's time, docs/runtimes.md). Settings already in the environment win.
MODEL_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "-1"}


def stage_env(stage: str = "") -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if stage in ("detect", "embed"):
        env = dict(MODEL_MALLOC, **env)
    return env


def make_run_dir() -> str:
    """The run's private folder (0700) for its ipc sockets, named after this process: a folder whose
    supervisor died without cleaning up (SIGKILL) is removed by the next run."""
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), "owd-*-*")):
        pid = os.path.basename(folder).split("-")[1]
        if pid.isdigit() and not _alive(int(pid)) and os.stat(folder).st_uid == os.getuid():
            shutil.rmtree(folder, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"owd-{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Child:
    name: str                   # the stage, with "#i" for the i-th worker of a pool (i >= 1)
    stage: str = ""
    worker: int = 0
    proc: subprocess.Popen | None = None
    beats: int = -1             # read end of its heartbeat pipe
    last_beat: float = 0.0
    beaten: bool = False        # its first heartbeat came: its signal handlers are installed
    finished: bool = False      # it said it ended cleanly (exit 0 follows once Python has torn down)
    signals: list[int] = field(default_factory=list)  # to send once it has beaten
    attempt: int = 0            # restarts so far
    restart_at: float | None = None  # a restart is due then
    reason: str = ""
    stopping: float | None = None    # when it was told to end (SIGINT)
    done: bool = False
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Starts the stages (each `python -m stages NAME`, settings as JSON on stdin, own process group,
    a heartbeat pipe) and watches them. A stage that exits unasked or whose heartbeat is silent for
    transport.stall_timeout_s is killed and restarted after a backoff, at most transport.restart_limit
    times (events stage_restarted / stage_failed); capture then replays what the sink had not logged.

    Supervised (a whole run): the run ends when capture exits 0 (its frames are all logged), then each
    later stage in pipeline order is sent SIGINT and exits once drained; no message ends a stage.
    Unsupervised (`--only`: one stage, the others elsewhere): a stage ends on its end-of-stream
    message. Ctrl-C / SIGTERM / SIGHUP end the stream at capture; a second one stops at once.
    """

    def __init__(self, settings: Settings, stages: tuple[str, ...] = ORDER, supervised: bool = True,
                 progress=None):
        self.settings, self.supervised = settings, supervised
        self.progress = progress  # stages.progress.Progress, or None: told of each loop, the stop and drains
        self.children: dict[str, Child] = {}
        for name in ORDER:
            if name in stages:
                pool = getattr(settings, name).workers if name in WORKERS else 1
                for i in range(pool):
                    key = f"{name}#{i}" if i else name
                    self.children[key] = Child(key, name, i)
        self.signals = 0
        self.events = None
        self.metrics: Metrics | None = None

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        ctx = zmq.Context()
        if self.supervised:  # our own events (restarts, failures) go to the sink's log like any stage's
            self.events = open_socket(ctx, zmq.PUSH, self.settings.transport.endpoints["events"], bind=False,
                                      hwm=100, linger_ms=1000,
                                      curve=socket_curve(self.settings, "supervisor", "events", bind=False))
        try:
            if self.supervised and self.settings.transport.endpoints.get("stats"):
                self.metrics = Metrics(ctx, self.settings, self.children)
            for child in reversed(self.children.values()):  # consumers first, the source last
                self._spawn(child)
            code = self._watch()
            if self.metrics is not None:
                self.metrics.finish(code, lambda: self.signals > 0)
            return code
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self._terminate()
            for child in self.children.values():
                if child.beats >= 0:
                    os.close(child.beats)
            if self.events is not None:
                self.events.close()
            ctx.term()

    def _spawn(self, child: Child) -> None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        env = dict(stage_env(child.stage), **{HEARTBEAT_ENV: str(write), ATTEMPT_ENV: str(child.attempt),
                                    SUPERVISED_ENV: "1" if self.supervised else "0", WORKER_ENV: str(child.worker),
                                   STOP_ENV: "1" if child.stopping else "0"})
        # Own process group: a terminal's Ctrl-C reaches only us, and we decide how to stop.
        proc = subprocess.Popen([sys.executable, "-m", "stages", child.stage], stdin=subprocess.PIPE, cwd=ROOT,
                                env=env, process_group=0, pass_fds=(write,))
        os.close(write)
        proc.stdin.write(self.settings.to_json().encode())
        proc.stdin.close()
        if child.beats >= 0:
            os.close(child.beats)
        child.proc, child.beats, child.last_beat, child.restart_at = proc, read, time.monotonic(), None
        child.beaten, child.finished, child.signals = False, False, []
        if child.stopping:
            child.stopping = time.monotonic()  # a restarted stage gets its whole drain budget again
        child.pids.append(proc.pid)

    def _watch(self) -> int:
        """Returns 0 when the run ended by itself, 2 when a stage rejected its input, 1 when a stage
        failed beyond its restarts, 130 after Ctrl-C / SIGTERM / SIGHUP."""
        t = self.settings.transport
        while True:
            now = time.monotonic()
            if self.metrics is not None:
                self.metrics.poll()
            if self.signals > 1:
                return 130
            if self.progress is not None:
                self.progress.tick()
            if self.signals == 1:
                if self.progress is not None:
                    self.progress.stopping()
                first = self.children.get("capture")
                for child in [first] if first is not None else self.children.values():
                    if not child.stopping:  # capture ends the stream; the rest drain
                        self._stop(child, now)  # (a lone stage without capture: drains until its budget)
            for child in self.children.values():
                if child.done:
                    continue
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        self._restart(child)
                    continue
                self._read_beats(child, now)
                code = child.proc.poll()
                if code is None and child.finished:
                    code = 0  # flushed and closed; its exit status is 0 unless teardown crashes
                if code is None:
                    # Before its first beat a stage is still starting Python: a slow machine gets time.
                    if now - child.last_beat > (t.stall_timeout_s if child.beaten else max(t.stall_timeout_s, 60.0)):
                        child.proc.kill()  # SIGKILL works on a stopped process too
                        child.proc.wait()
                        code = f"stalled (no heartbeat for {now - child.last_beat:.0f} s)"
                    elif child.stopping and now - child.stopping > self._stop_budget(child):
                        print(f"owd: {child.name} did not finish within {self._stop_budget(child):.0f} s; "
                              f"killed", file=sys.stderr)
                        child.proc.kill()
                        child.proc.wait()
                        child.done = True
                        continue
                    else:
                        continue
                if code == 0 and (child.stopping or not self.supervised or child.stage == "capture"):
                    child.done = True  # capture: the stream is over and every frame of it logged
                    continue
                if child.stage == "sink" and code == QUIT:
                    return 0  # the window was closed
                if code == 2:
                    return 2  # the stage printed its one-line reason
                if child.attempt >= t.restart_limit:
                    self._emit("stage_failed", stage=child.stage, pid=child.proc.pid, reason=_why(code),
                               restarts=child.attempt, **({"worker": child.worker} if child.worker else {}))
                    print(f"owd: stage {child.name} failed ({_why(code)}) after {child.attempt} restart(s)",
                          file=sys.stderr)
                    time.sleep(1.0)  # let the sink log it
                    return 1
                child.reason = _why(code)
                child.restart_at = now + min(t.restart_backoff_s * 2 ** child.attempt, 8.0)
                print(f"owd: stage {child.name} {child.reason}; restarting", file=sys.stderr)
            if self.supervised:
                self._next_to_stop(now)
            if all(c.done for c in self.children.values()):
                return 130 if self.signals else 0
            time.sleep(0.1)

    def _restart(self, child: Child) -> None:
        old = child.proc.pid
        if child.proc.poll() is None:  # it ended unasked but is still tearing down
            child.proc.kill()
            child.proc.wait()
        child.attempt += 1
        self._spawn(child)
        self._emit("stage_restarted", stage=child.stage, pid=child.proc.pid, old_pid=old, reason=child.reason,
                   attempt=child.attempt, **({"worker": child.worker} if child.worker else {}))
        capture = self.children.get("capture")
        if child.stage in REPLAYED_AFTER and capture is not None and not capture.done:
            self._signal(capture, signal.SIGUSR1)  # send again what the sink has not logged

    def _next_to_stop(self, now: float) -> None:
        """Once every stage before it is done, the next one (all workers of a pool at once) is told
        to drain and exit."""
        first = next((c.stage for c in self.children.values() if not c.done), None)
        for child in self.children.values():
            if child.stage == first and not child.done and not child.stopping and child.name != "capture":
                self._stop(child, now)
                if self.progress is not None:
                    self.progress.draining(child.name)

    def _stop(self, child: Child, now: float) -> None:
        child.stopping = now
        if child.restart_at is None:
            self._signal(child, signal.SIGINT)

    def _signal(self, child: Child, sig: int) -> None:
        """Now if its handlers are installed, else at its first heartbeat (a signal earlier would kill it)."""
        if child.beaten and child.restart_at is None:
            if child.proc.poll() is None:
                child.proc.send_signal(sig)
        else:
            child.signals.append(sig)

    def _stop_budget(self, child: Child) -> float:
        t = self.settings.transport
        if child.stage == "capture":  # capture bounds its own drain; this is the backstop
            return t.shutdown_timeout_s + t.stall_timeout_s + 60.0
        return t.shutdown_timeout_s

    def _read_beats(self, child: Child, now: float) -> None:
        try:
            data = os.read(child.beats, 4096)
            if data:
                child.last_beat, child.beaten, child.finished = now, True, child.finished or b"D" in data
                while child.signals and child.proc.poll() is None:
                    child.proc.send_signal(child.signals.pop(0))
        except BlockingIOError:
            pass

    def _emit(self, type_: str, **fields) -> None:
        if self.events is not None:
            try:
                send(self.events, event(type_, **fields), zmq.NOBLOCK)
            except zmq.Again:
                pass

    def _terminate(self, grace_s: float = 3.0) -> None:
        """SIGTERM whoever still runs (those that finished cleanly get the grace period to exit by
        themselves first), SIGKILL whoever outlives the grace period."""
        deadline = time.monotonic() + grace_s
        for c in self.children.values():
            if c.finished and c.proc.poll() is None:
                try:
                    c.proc.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    pass
        procs = [c.proc for c in self.children.values() if c.proc is not None and c.proc.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _why(code) -> str:
    if isinstance(code, str):
        return code
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"
