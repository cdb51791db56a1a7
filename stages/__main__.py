"""Entry point of one stage process: `python -m stages NAME` with the settings as JSON on stdin."""
from __future__ import annotations

import importlib
import logging
import sys

from models.registry import ModelError
from models.sddc import MemoryFileError
from stages.config import ConfigError, Settings
from stages.process import StageProcess, die_with_parent
from stream.sources import SourceError

STAGES = ("capture", "detect", "embed", "gate", "cluster", "sink")
EXPECTED_ERRORS = (SourceError, ModelError, ConfigError, MemoryFileError, OSError)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m stages {{{','.join(STAGES)}}} < settings.json", file=sys.stderr)
        return 2
    name = argv[0]
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name:>7} %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every SIMD variant it tries
    try:
        settings = Settings.from_json(sys.stdin.read())
        module = importlib.import_module(f"stages.{name}")
        stage = StageProcess(name, settings)
        try:
            return module.run(stage)
        finally:
            stage.close()
    except EXPECTED_ERRORS as exc:
        print(f"owd {name}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
