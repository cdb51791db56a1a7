#!/usr/bin/env python3
"""`python evaluate.py …` from a checkout: the evaluator of evaluation/evaluate.py (also `owd evaluate …`)."""
import sys

from evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
