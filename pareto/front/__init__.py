"""Fronts: Pareto filtering, quality metrics, preference grids, the ``Front`` type and plots.

Core package: depends on numpy and pymoo only (matplotlib / plotly are imported inside the plot functions).
All objectives are maximised.
"""

from .grid import parse_weights, preference_grid, sample_preferences, validate_weights
from .metrics import (
    dominates,
    front_metrics,
    hypervolume,
    igd,
    igd_plus,
    inner_product,
    non_dominated_mask,
    spacing,
    sparsity,
)
from .plot import plot_front_html, plot_front_png
from .types import Front, FrontPoint

__all__ = [
    "Front",
    "FrontPoint",
    "dominates",
    "front_metrics",
    "hypervolume",
    "igd",
    "igd_plus",
    "inner_product",
    "non_dominated_mask",
    "parse_weights",
    "plot_front_html",
    "plot_front_png",
    "preference_grid",
    "sample_preferences",
    "spacing",
    "sparsity",
    "validate_weights",
]
