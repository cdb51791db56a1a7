#!/usr/bin/env python3
"""The `owd` command from a checkout: `python run_pipeline.py …` is `owd …` (see stages/cli.py)."""
import sys

from stages.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="run_pipeline.py"))
