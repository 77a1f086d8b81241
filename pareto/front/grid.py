"""Preference (lambda) grids, validation, parsing and sampling.

A preference vector lambda lies on the probability simplex: K non-negative weights summing to 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "SUM_TOL",
    "n_das_dennis",
    "preference_grid",
    "validate_weights",
    "parse_weights",
    "sample_preferences",
]

SUM_TOL = 1e-6
DEFAULT_N_POINTS = 11


def n_das_dennis(k: int, n_partitions: int) -> int:
    """Number of Das-Dennis points for ``k`` objectives and ``n_partitions``: C(p + k - 1, k - 1)."""
    return math.comb(n_partitions + k - 1, k - 1)


def _sort_rows(grid: np.ndarray) -> np.ndarray:
    """Sort rows ascending lexicographically (column 0 first, then column 1, ...)."""
    return grid[np.lexsort(grid.T[::-1])]


def preference_grid(k: int, n_points: int | None = None, n_partitions: int | None = None) -> np.ndarray:
    """A deterministic grid of preference vectors on the K-simplex, vertices included.

    * K = 1: ``[[1.0]]``.
    * K = 2: ``n_points`` evenly spaced vectors from ``(0, 1)`` to ``(1, 0)`` (11 points -> step 0.1);
      ``n_partitions=p`` is the same as ``n_points=p + 1``.
    * K >= 3: Das-Dennis directions (pymoo ``get_reference_directions("das-dennis", k, n_partitions=p)``),
      ``C(p + K - 1, K - 1)`` points. If only ``n_points`` is given, the smallest ``p`` giving at least
      ``n_points`` points is used (so the grid may have more rows than asked for).

    Give ``n_points`` or ``n_partitions``, not both; with neither, ``n_points=11``. Rows are sorted ascending
    lexicographically (column 0 first), so for K = 2 the first row is ``(0, 1)`` and the last ``(1, 0)``.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k: number of objectives must be a positive integer, got {k!r}")
    k = int(k)
    if n_points is not None and n_partitions is not None:
        raise ValueError("give n_points or n_partitions, not both")
    if n_points is None and n_partitions is None:
        n_points = DEFAULT_N_POINTS
    if n_partitions is not None and (int(n_partitions) != n_partitions or n_partitions < 1):
        raise ValueError(f"n_partitions: must be an integer >= 1, got {n_partitions!r}")
    if n_points is not None and (int(n_points) != n_points or n_points < 1):
        raise ValueError(f"n_points: must be an integer >= 1, got {n_points!r}")
    if k == 1:
        return np.ones((1, 1))
    if k == 2:
        n = int(n_points) if n_points is not None else int(n_partitions) + 1
        if n < 2:
            raise ValueError(f"n_points: K=2 needs at least 2 points to include both vertices, got {n}")
        w0 = np.round(np.linspace(0.0, 1.0, n), 12)
        w1 = np.round(1.0 - w0, 12)
        return _sort_rows(np.stack([w0, w1], axis=1))
    if n_partitions is None:
        p = 1
        while n_das_dennis(k, p) < n_points:
            p += 1
    else:
        p = int(n_partitions)
    from pymoo.util.ref_dirs import get_reference_directions

    grid = np.asarray(get_reference_directions("das-dennis", k, n_partitions=p), dtype=float)
    return _sort_rows(grid)


def validate_weights(w: Any, k: int) -> np.ndarray:
    """Return ``w`` as a float array of shape ``(k,)`` or raise ``ValueError`` naming the problem.

    Checks, in order: numeric, 1-D, length ``k``, finite, non-negative, sums to 1 within ``1e-6``.
    """
    try:
        arr = np.asarray(w, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"weights: not numeric ({w!r})") from exc
    if arr.ndim != 1:
        raise ValueError(f"weights: expected a flat vector of {k} numbers, got shape {arr.shape}")
    if arr.shape[0] != k:
        raise ValueError(f"weights: wrong length: {arr.shape[0]} weights but there are {k} objectives; give one "
                         "weight per objective")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"weights: must be finite numbers, got NaN or infinite values ({arr.tolist()})")
    if np.any(arr < 0):
        raise ValueError(f"weights: must be non-negative, got negative values ({arr.tolist()})")
    total = float(arr.sum())
    if abs(total - 1.0) > SUM_TOL:
        raise ValueError(f"weights: must sum to 1 (within {SUM_TOL:g}), they sum to {total:.9g}; normalise them "
                         "onto the simplex")
    return arr.copy()


def parse_weights(s: str, k: int) -> np.ndarray:
    """Parse ``"0.6,0.3,0.1"`` (spaces and surrounding brackets allowed) and validate it for ``k`` weights."""
    if not isinstance(s, str):
        raise ValueError(f"weights: expected a string like '0.6,0.3,0.1', got {type(s).__name__}")
    body = s.strip()
    if len(body) >= 2 and body[0] + body[-1] in ("[]", "()"):
        body = body[1:-1]
    parts = [p.strip() for p in body.split(",")]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    if not body.strip():
        raise ValueError(f"weights: could not parse {s!r}: empty, expected comma-separated numbers")
    values = []
    for part in parts:
        try:
            values.append(float(part))
        except ValueError:
            raise ValueError(f"weights: could not parse {part!r} as a number in {s!r}") from None
    return validate_weights(values, k)


def sample_preferences(rng: np.random.Generator, k: int, n: int, vertex_prob: float = 0.0) -> np.ndarray:
    """Sample ``n`` preference vectors: Dirichlet(1, ..., 1) mixed with vertex oversampling.

    Each row is, independently, a uniformly chosen one-hot vertex with probability ``vertex_prob`` and a
    Dirichlet(1) draw (uniform on the simplex) otherwise. Returns an ``(n, k)`` array.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected numpy.random.Generator, got {type(rng).__name__}")
    if int(k) != k or k < 1:
        raise ValueError(f"k: must be an integer >= 1, got {k!r}")
    if int(n) != n or n < 0:
        raise ValueError(f"n: must be an integer >= 0, got {n!r}")
    if not (0.0 <= float(vertex_prob) <= 1.0):
        raise ValueError(f"vertex_prob: must be in [0, 1], got {vertex_prob!r}")
    k, n = int(k), int(n)
    out = rng.dirichlet(np.ones(k), size=n) if k > 1 else np.ones((n, 1))
    is_vertex = rng.random(n) < vertex_prob
    n_vertex = int(is_vertex.sum())
    if n_vertex:
        out[is_vertex] = np.eye(k)[rng.integers(0, k, size=n_vertex)]
    return out
