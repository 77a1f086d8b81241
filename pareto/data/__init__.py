"""Preference datasets: the embedded synthetic task (tiny-hh) and loaders for real formats."""

from pareto.config import DATASET_FORMATS
from pareto.data.loaders import DatasetError, PreferenceDataset, load_preference_dataset, load_task_dataset
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
__all__ += ["DATASET_FORMATS", "DatasetError", "PreferenceDataset", "load_preference_dataset", "load_task_dataset"]
