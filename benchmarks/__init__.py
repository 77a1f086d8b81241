"""Benchmarks: front quality per compute and speed against the peers (`python -m benchmarks.run`, `pareto bench`).

Each module exposes `run() -> dict` returning {"name", "rows": [row, ...], "details"}; a row is one figure of
benchmarks/RESULTS.md: {"figure", "value", "baseline", "ratio", "target", "verdict"}. Speed figures are ratios
against a baseline measured in the same process, so a noisy shared machine still gives a meaningful number.
"""
