"""Entry point of one stage process: `python -m stages NAME` with the settings as JSON on stdin."""
from __future__ import annotations

import sys

from stages.lifecycle import die_with_parent, finished, install_signals, start_heartbeat  # stdlib only: before slow imports



def main(argv: list[str]) -> int:
    install_signals()  # before the slow imports: a signal during start-up must not be a traceback
    from stream.topology import STAGES  # small: pyzmq's constants
    if len(argv) != 1 or argv[0] not in STAGES:
        print(f"usage: python -m stages {{{','.join(STAGES)}}} < settings.json", file=sys.stderr)
        return 2
    name = argv[0]
    start_heartbeat()
    die_with_parent()
    import importlib
    import logging

    from owd.errors import OwdError
    from stages.config import Settings
    from stages.process import StageProcess
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name:>7} %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every SIMD variant it tries
    try:
        settings = Settings.from_json(sys.stdin.read())
        module = importlib.import_module(f"stages.{name}")
        stage = StageProcess(name, settings)
        try:
            code = module.run(stage)
        finally:
            stage.close()
        if code == 0:
            finished()
        return code
    except (OwdError, OSError) as exc:  # what the user can fix: one line, exit 2
        print(f"owd {name}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
