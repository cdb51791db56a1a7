"""What the person at the terminal sees of a run: a progress bar (file mode) or a status line every few seconds (live), and the summary at the end."""
from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import cv2

from stages.config import Settings
from stream.sources import IMAGE_SUFFIXES, is_live, save_paths

READ_EVERY_S = 0.5   # the sink rewrites the status file about this often
LINE_EVERY_S = 5.0   # live mode, or stderr not a terminal: one status line this often


def count_frames(source: str, max_frames: int = 0) -> int | None:
    """Frames a file source will give (None for live sources or when the container does not say)."""
    if not source or is_live(source):
        return None
    path = Path(source)
    if path.is_dir():
        total = sum(1 for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        cap = cv2.VideoCapture(str(path))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
    if total <= 0:
        return None
    return min(total, max_frames) if max_frames else total


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 80  # a terminal-like object without a descriptor (tests)


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes} min {s} s" if minutes else f"{seconds:.1f} s"


def _shown(path: str | None) -> str:
    """A path as short as it stays clear: relative when it lies under the current folder."""
    if not path:
        return "-"
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _videos(save: str | None, sources: list[str]) -> str:
    """The annotated video, or with several sources each source's file."""
    if not save or len(sources) < 2:
        return _shown(save)
    return ", ".join(_shown(p) for p in save_paths(save, sources).values()) + " (one per source)"


class Progress:
    """Read by the supervisor's watch loop (tick, about ten times a second; it reads the sink's status
    file at most every READ_EVERY_S, so it costs nothing measurable)."""

    def __init__(self, settings: Settings, total: int | None, stream=None):
        self.settings, self.total = settings, total
        self.stream = stream or sys.stderr
        self.live = total is None or settings.capture.mode == "live"
        self.tty = self.stream.isatty() and _columns(self.stream) > 0  # a bar needs a width (a bare pty has none)
        self.started = time.monotonic()
        self.read_at = self.line_at = 0.0
        self.line_frames, self.line_t = 0, self.started  # the rate of a status line: since the one before
        self.status: dict = {}
        self.bar = None
        self.stopping_said = False

    def _read(self) -> dict:
        try:
            with open(self.settings.sink.status) as f:
                self.status = json.load(f)
        except (OSError, ValueError, TypeError):
            pass  # not written yet, or being replaced
        return self.status

    def tick(self, final: bool = False) -> None:
        now = time.monotonic()
        if now - self.read_at < READ_EVERY_S:
            return
        self.read_at = now
        st = self._read()
        frames, classes, drops = st.get("frames", 0), len(st.get("classes", ())), st.get("dropped", 0)
        if not self.live and self.tty:
            if self.bar is None:
                from tqdm import tqdm
                self.bar = tqdm(total=self.total, unit="frame", file=self.stream, dynamic_ncols=True,
                                desc="owd loading models", leave=True)
            if frames:
                self.bar.set_description_str("owd", refresh=False)
            self.bar.set_postfix_str(f"classes {classes}, drops {drops}", refresh=False)
            self.bar.update(frames - self.bar.n)
            return
        if now - self.line_at >= LINE_EVERY_S:
            since = self.started if final else self.line_t  # the last line: over the whole run (a drain
            rate = (frames - (0 if final else self.line_frames)) / max(now - since, 1e-9)  # adds no frames)
            self.line_at = self.line_t = now
            self.line_frames = frames
            elapsed = now - self.started
            done = f"{frames}/{self.total}" if self.total and not self.live else f"{frames}"
            state = f"{done} frames, {rate:.1f} fps" if frames else "loading models…"
            self._say(f"owd: {state}, classes {classes}, drops {drops}, {_duration(elapsed)}")

    def failed_sources(self) -> list[str]:
        """Sources that failed during the run, as the sink counted them (the run's exit is then 1)."""
        failed = self._read().get("failed_sources", [])
        return failed if isinstance(failed, list) else []

    def stopping(self) -> None:
        """The first Ctrl-C / SIGTERM: say what happens during the drain that follows."""
        if not self.stopping_said:
            self.stopping_said = True
            self._say("owd: stopping: no new frames are read; the frames already captured are being processed "
                      "and logged (Ctrl-C again to stop at once)")

    def draining(self, stage: str) -> None:
        if self.stopping_said:
            self._say(f"owd: stopping: waiting for {stage} to finish its queue")

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def finish(self, code: int, out=None) -> None:
        """Closes the bar and prints the summary table (stdout) unless a stage refused its input (2)."""
        self.read_at = self.line_at = 0.0  # the final count, whatever the intervals
        self.tick(final=True)
        if self.bar is not None:
            self.bar.close()
        if code == 2:
            return
        st, sink = self._read(), self.settings.sink
        failed = st.get("failed_sources", [])
        how = {0: "finished", 130: "stopped", 1: "failed"}.get(code, f"exit {code}")
        how = f"finished, {len(failed)} source(s) failed," if code == 1 and failed else how
        rows = [("run", f"{sink.run_id} {how} after {_duration(time.monotonic() - self.started)} (exit {code})"),
                ("frames", f"{st.get('frames', 0)}" + (f" of {self.total}" if self.total and not self.live else "")),
                ("fps", f"{st.get('fps', 0.0):.1f} (frames logged over wall time)"),
                ("dropped", f"{st.get('dropped', 0)}  lost {st.get('lost', 0)}  "
                            f"rejected messages {st.get('rejected', 0)}"),
                ("classes", f"{len(st.get('classes', []))}" + (f"  ({', '.join(st['classes'])})"
                                                                if st.get("classes") else "")),
                ("events", _shown(sink.events)), ("video", _videos(sink.save, list(self.settings.capture.source)))]
        if failed:
            rows.insert(2, ("failed", ", ".join(_shown(x) for x in failed) + "  (source_failed in the events)"))
        out = out or sys.stdout
        for key, value in rows:
            print(f"  {key:<8} {value}", file=out)
        out.flush()
