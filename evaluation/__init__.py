"""The open-world evaluator: `evaluate` (CLI and protocol), `metrics`, `baselines`, `replay` (--stream) and `plots`."""
