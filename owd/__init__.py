"""The project's root package: its version and the error root that every layer (stream, models, stages) shares."""
from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("owd")
except metadata.PackageNotFoundError:  # a plain checkout, not installed
    __version__ = "0.1.0+checkout"
