"""OwdError, the one root of the errors a user can fix (bad input, config, model, file): the CLI prints them as one line and exits 2."""
from __future__ import annotations


class OwdError(Exception):
    """An expected failure whose message says what to do; never a bug (those stay tracebacks)."""
