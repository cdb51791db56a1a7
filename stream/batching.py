"""Collects up to N messages or whatever arrives within T ms, whichever comes first, for batched inference."""
from __future__ import annotations

import time

from stream.messages import EndOfStream
from stream.sockets import Inbox


def collect(inbox: Inbox, max_items: int, timeout_ms: int, idle_ms: int = 200):
    """-> (messages, EndOfStream or None). Waits for the first message (returning ([], None) after
    idle_ms of silence, so the caller can check on its process), then fills the batch until
    max_items or timeout_ms after the first; an end-of-stream closes the batch at once."""
    first = inbox.recv(idle_ms)
    if first is None:
        return [], None
    if isinstance(first, EndOfStream):
        return [], first
    batch = [first]
    deadline = time.monotonic() + timeout_ms / 1000
    while len(batch) < max_items:
        left_ms = int((deadline - time.monotonic()) * 1000)
        msg = inbox.recv(max(left_ms, 0))
        if msg is None:
            if left_ms <= 0:
                break
            continue
        if isinstance(msg, EndOfStream):
            return batch, msg
        batch.append(msg)
    return batch, None
