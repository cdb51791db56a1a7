"""A stage process's first minute: signals, heartbeat and parent death set up before any slow import (stdlib only)."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

HEARTBEAT_S = 1.0
# Set by the supervisor: whole run (end-of-stream messages ignored), restart count, start already
# told to stop, heartbeat pipe.
SUPERVISED_ENV, ATTEMPT_ENV, STOP_ENV, HEARTBEAT_ENV = "OWD_SUPERVISED", "OWD_ATTEMPT", "OWD_STOP", "OWD_HEARTBEAT_FD"
WORKER_ENV = "OWD_WORKER"  # index of a local worker in its pool (detect.workers, embed.workers)
QUIT = 3  # the sink's exit status when the user closed the window
_PR_SET_PDEATHSIG = 1

flags = {"stop": os.environ.get(STOP_ENV) == "1", "replay": False, "terminated": False}


def install_signals() -> None:
    """SIGINT: stop (capture ends the stream; a supervised stage drains and exits). SIGTERM (also
    the kernel's signal when the supervisor dies): clean up and exit at once. SIGUSR1 (capture): a
    downstream stage was restarted, replay what was not committed."""
    signal.signal(signal.SIGINT, lambda *_: flags.__setitem__("stop", True))
    signal.signal(signal.SIGUSR1, lambda *_: flags.__setitem__("replay", True))
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame) -> None:
    flags["terminated"] = True
    raise SystemExit(128 + signum)


def start_heartbeat() -> None:
    """A byte every HEARTBEAT_S on the pipe the supervisor gave us. A thread, so a long model call
    still beats; a stopped or dead process does not. The first beat also says: signals are set up."""
    fd = os.environ.get(HEARTBEAT_ENV)
    if not fd:
        return

    def beat(fd: int) -> None:
        while True:
            try:
                os.write(fd, b".")
            except BlockingIOError:
                pass
            except OSError:
                return  # the supervisor is gone
            time.sleep(HEARTBEAT_S)
    threading.Thread(target=beat, args=(int(fd),), daemon=True, name="heartbeat").start()


def finished() -> None:
    """Tells the supervisor this stage ended cleanly, its sockets flushed and closed: the next stage
    may be told to stop while this process still tears its interpreter down (seconds with torch)."""
    fd = os.environ.get(HEARTBEAT_ENV)
    if fd:
        try:
            os.write(int(fd), b"D")
        except OSError:
            pass


def die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM when the supervisor dies, so no stage is orphaned."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
