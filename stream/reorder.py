"""Puts one source's frames back in index order after workers finished them out of order, within a bound."""
from __future__ import annotations

_FIRST_WAIT_S = 1.0  # a gate that does not know where the stream stands (restarted) gathers this long first


class Reorder:
    """Frames of one source in, the same frames out in index order, each once.

    A missing index is waited for while fewer than `max_held` frames are held and the oldest held
    frame arrived less than `max_wait_s` ago; then it is given up (counted in `skipped`) and the
    frames after it go on. A frame that arrives after its turn (a replay, or one given up on) comes
    out at once marked late, so the caller can keep it away from order-dependent state (the
    tracker); a duplicate of a held frame is dropped. max_held=1 is the live path: never wait.
    `start` None: the first frames decide where the stream stands.
    """

    def __init__(self, max_held: int, max_wait_s: float, start: int | None = 0):
        self.max_held, self.max_wait_s = max_held, max_wait_s
        self.next = start
        self.held: dict[int, tuple[float, object]] = {}  # index -> (arrival time, message)
        self.skipped = 0   # indices given up on
        self.late = 0      # frames that came after their turn

    def push(self, index: int, msg, now: float) -> list[tuple[object, bool]]:
        """-> [(message, in order)] ready now."""
        if self.next is not None and index < self.next:
            self.late += 1
            return [(msg, False)]
        if index not in self.held:
            self.held[index] = (now, msg)
        return self.release(now)

    def release(self, now: float, flush: bool = False) -> list[tuple[object, bool]]:
        """What may go now (everything held with `flush`: the stream ended)."""
        out = []
        while self.held:
            if self.next in self.held:
                out.append((self.held.pop(self.next)[1], True))
                self.next += 1
                continue
            waited = now - min(t for t, _ in self.held.values())
            limit = self.max_wait_s if self.next is not None else min(_FIRST_WAIT_S, self.max_wait_s)
            if not (flush or len(self.held) >= self.max_held or waited > limit):
                break
            first = min(self.held)
            if self.next is not None:
                self.skipped += first - self.next
            self.next = first
        return out
