"""Preference datasets: the embedded synthetic task (tiny-hh) and loaders for real formats."""

from pareto.data.tiny_hh import (
    OBJECTIVES,
    STYLES,
    TASKS,
    PreferencePair,
    Prompt,
    TinyHH,
    load_task,
    simplex_grid,
)

__all__ = ["OBJECTIVES", "STYLES", "TASKS", "PreferencePair", "Prompt", "TinyHH", "load_task", "simplex_grid"]
