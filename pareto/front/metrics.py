"""Front quality metrics.

Every objective in pareto is **maximised**. pymoo (and moocore underneath it) minimises, so values are negated
before they are handed to it. All functions take ``values`` as an ``(N, K)`` array (N points, K objectives);
a 1-D array of length K is read as a single point.

pymoo is imported lazily inside the functions, so ``import pareto.front`` stays cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pareto.config import Z_REFERENCE

__all__ = [
    "dominates",
    "non_dominated_mask",
    "hypervolume",
    "igd",
    "igd_plus",
    "inner_product",
    "spacing",
    "sparsity",
    "lexicographic_order",
    "front_metrics",
    "Z_REFERENCE",
]


def _as_values(values: Any, name: str = "values", k: int | None = None) -> np.ndarray:
    """Return ``values`` as a finite float ``(N, K)`` array or raise ``ValueError``."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1) if arr.size else arr.reshape(0, k or 0)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (points x objectives), got shape {arr.shape}")
    if k is not None and arr.shape[0] and arr.shape[1] != k:
        raise ValueError(f"{name}: expected {k} objectives per point, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite entries")
    return arr


def _as_point(point: Any, name: str, k: int) -> np.ndarray:
    arr = np.asarray(point, dtype=float).reshape(-1)
    if arr.shape[0] != k:
        raise ValueError(f"{name}: expected {k} coordinates, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite entries")
    return arr


def dominates(a: Any, b: Any) -> bool:
    """True when ``a`` Pareto-dominates ``b`` under maximisation (>= everywhere, > somewhere)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    return bool(np.all(a >= b) and np.any(a > b))


def non_dominated_mask(values: Any) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` (maximisation).

    Exact (pymoo ``NonDominatedSorting``, i.e. moocore's Pareto ranking, no epsilon). Duplicated points are
    treated as not dominating each other, so every copy of a non-dominated point is kept.
    """
    arr = _as_values(values)
    mask = np.zeros(arr.shape[0], dtype=bool)
    if arr.shape[0] == 0:
        return mask
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    idx = NonDominatedSorting().do(-arr, only_non_dominated_front=True)
    mask[np.asarray(idx, dtype=int)] = True
    return mask


# The hypervolume reference of fronts scored in z-scored reward-model units: 3 standard deviations below the mean
# in every objective (the oracle's fronts use the config's evaluation.reference_point instead): Z_REFERENCE, defined
# with the config, which resolves every front's reference (`ExperimentConfig.front_reference`).


def hypervolume(values: Any, reference_point: Any) -> float:
    """Hypervolume dominated by ``values`` and bounded below by ``reference_point`` (maximisation).

    Computed with pymoo ``HV`` on negated values. Points that do not strictly dominate the reference point
    (strictly greater in every objective) contribute nothing. An empty set gives ``0.0``. The reference point
    must come from the task config, never from the data being scored.
    """
    arr = _as_values(values)
    if arr.shape[0] == 0:
        return 0.0
    ref = _as_point(reference_point, "reference_point", arr.shape[1])
    arr = arr[np.all(arr > ref, axis=1)]
    if arr.shape[0] == 0:
        return 0.0
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=-ref)(-arr))


def _min_dist(from_pts: np.ndarray, to_pts: np.ndarray) -> np.ndarray:
    """For each row of ``from_pts``, the Euclidean distance to the nearest row of ``to_pts``."""
    diff = from_pts[:, None, :] - to_pts[None, :, :]
    return np.sqrt((diff**2).sum(axis=-1)).min(axis=1)


def _igd_inputs(values: Any, reference_front: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(reference front, values) as ``(M, K)`` and ``(N, K)`` arrays; ``ValueError`` if either is empty."""
    ref = _as_values(reference_front, "reference_front")
    arr = _as_values(values, k=ref.shape[1])
    if ref.shape[0] == 0:
        raise ValueError("reference_front: is empty")
    if arr.shape[0] == 0:
        raise ValueError(f"values: is empty, {what} is undefined")
    return ref, arr


def igd(values: Any, reference_front: Any) -> float:
    """Inverted generational distance: mean over reference-front points of the distance to the nearest value.

    ``IGD = 1/|R| sum_{r in R} min_{x in values} ||r - x||_2`` (same definition as pymoo's ``IGD`` without
    normalisation). ``igd(F, F) == 0``. Raises ``ValueError`` if either set is empty.
    """
    ref, arr = _igd_inputs(values, reference_front, "IGD")
    return float(_min_dist(ref, arr).mean())


def igd_plus(values: Any, reference_front: Any) -> float:
    """IGD+ (Ishibuchi et al. 2015) under maximisation: a weakly Pareto-compliant variant of IGD.

    ``d+(r, x) = sqrt(sum_k max(r_k - x_k, 0)^2)``: only the objectives in which ``x`` is worse than the
    reference-front point ``r`` count. ``IGD+ = 1/|R| sum_r min_x d+(r, x)``.
    """
    ref, arr = _igd_inputs(values, reference_front, "IGD+")
    diff = np.maximum(ref[:, None, :] - arr[None, :, :], 0.0)
    return float(np.sqrt((diff**2).sum(axis=-1)).min(axis=1).mean())


def inner_product(weights: Any, values: Any) -> float:
    """Controllability: ``mean_i <lambda_i, xi(lambda_i)>`` over the rows of ``weights`` and ``values``."""
    arr = _as_values(values)
    w = _as_values(weights, "weights")
    if w.shape != arr.shape:
        raise ValueError(f"weights: shape {w.shape} does not match values shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("values: is empty, inner product is undefined")
    return float(np.einsum("ij,ij->i", w, arr).mean())


def spacing(values: Any) -> float:
    """Spacing: ``sqrt(1/N sum_i (d_i - mean(d))^2)`` with ``d_i = min_{j != i} ||xi_i - xi_j||_2``.

    Zero for perfectly even spacing. Fewer than two points give ``0.0``. (Schott's original uses the L1
    distance and ``1/(N-1)``; pareto uses Euclidean distance and ``1/N``.)
    """
    arr = _as_values(values)
    n = arr.shape[0]
    if n < 2:
        return 0.0
    diff = arr[:, None, :] - arr[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=-1))
    np.fill_diagonal(dist, np.inf)
    d = dist.min(axis=1)
    return float(np.sqrt(((d - d.mean()) ** 2).mean()))


def lexicographic_order(values: Any) -> np.ndarray:
    """Indices that sort rows ascending by objective 0, ties broken by objective 1, then 2, ..."""
    arr = _as_values(values)
    if arr.shape[0] == 0:
        return np.zeros(0, dtype=int)
    return np.lexsort(arr.T[::-1])


def sparsity(values: Any) -> float:
    """Sparsity of the non-dominated subset: ``1/(K (N-1)) sum_i ||xi^i - xi^{i+1}||^2``.

    ``N`` is the number of non-dominated points and ``K`` the number of objectives. The non-dominated points
    are ordered lexicographically (ascending objective 0, ties by objective 1, ...), which for K = 2 is the
    order along the front. Lower is denser. Fewer than two non-dominated points give ``0.0``.
    """
    arr = _as_values(values)
    if arr.shape[0] < 2:
        return 0.0
    nd = arr[non_dominated_mask(arr)]
    n, k = nd.shape
    if n < 2:
        return 0.0
    nd = nd[lexicographic_order(nd)]
    steps = np.diff(nd, axis=0)
    return float((steps**2).sum() / (k * (n - 1)))


def front_metrics(
    weights: Any,
    values: Any,
    reference_point: Any,
    oracle_front: Any = None,
) -> dict[str, float]:
    """All front metrics in one dict.

    Keys: ``hypervolume`` (all points; dominated ones add nothing), ``inner_product`` (all points, omitted for
    an empty front), ``spacing`` and ``sparsity`` (non-dominated points), ``n_points``, ``n_nondominated``,
    and, only when ``oracle_front`` (an ``(M, K)`` array of oracle values) is given and the front is not
    empty, ``igd`` and ``igd_plus``.
    """
    arr = _as_values(values)
    k = arr.shape[1] if arr.shape[0] else None
    w = _as_values(weights, "weights", k=k)
    if w.shape[0] != arr.shape[0]:
        raise ValueError(f"weights: {w.shape[0]} rows but values has {arr.shape[0]}")
    mask = non_dominated_mask(arr)
    nd = arr[mask]
    out: dict[str, float] = {
        "hypervolume": hypervolume(arr, reference_point),
        "spacing": spacing(nd),
        "sparsity": sparsity(nd),
        "n_points": int(arr.shape[0]),
        "n_nondominated": int(mask.sum()),
    }
    if arr.shape[0]:
        out["inner_product"] = inner_product(w, arr)
    if oracle_front is not None and arr.shape[0]:
        out["igd"] = igd(arr, oracle_front)
        out["igd_plus"] = igd_plus(arr, oracle_front)
    return out


def difference_stderr(stderr_a: Any, stderr_b: Any, scores_a: Any = None, scores_b: Any = None) -> np.ndarray:
    """The standard error [K] of (mean_a − mean_b), per objective.

    With per-prompt scores ``[n, K]`` of both points on the same prompts, it is the standard error of the paired
    differences, std(a − b) / √n: both points answered the same prompts, so how hard a prompt is cancels out.
    Without them (or with different prompt counts) the two means are treated as independent:
    √(se_a² + se_b²), which is larger whenever the scores of the two points correlate across prompts.
    """
    if scores_a is not None and scores_b is not None:
        a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
        if a.shape == b.shape and a.ndim == 2 and a.shape[0] > 1:
            return (a - b).std(0, ddof=1) / np.sqrt(a.shape[0])
    return np.hypot(np.asarray(stderr_a, dtype=np.float64), np.asarray(stderr_b, dtype=np.float64))


def vertex_separation(weights: Any, values: Any, stderr: Any, scores: Any = None) -> np.ndarray:
    """How far each objective's own vertex beats the other vertices, in standard errors.

    For objective i: min over vertices e_j (j ≠ i) of (ξ_i(e_i) − ξ_i(e_j)) / se_i(e_i − e_j), with the standard
    error of the difference from :func:`difference_stderr` (paired when ``scores``, a per-point list of per-prompt
    score arrays ``[n, K]`` or None, has both vertices). Returns [K] (NaN for an objective whose vertex is not on
    the grid). > 2 everywhere means the front really responds to λ: each objective peaks at its own vertex by
    more than two standard errors.
    """
    w, v, s = (np.asarray(x, dtype=np.float64) for x in (weights, values, stderr))
    per_prompt = list(scores) if scores is not None else [None] * len(w)
    k = w.shape[1]
    vertex_row = {}
    for i in range(k):
        hits = np.flatnonzero(np.isclose(w[:, i], 1.0))
        if hits.size:
            vertex_row[i] = int(hits[0])
    out = np.full(k, np.nan)
    for i, ri in vertex_row.items():
        gaps = [(v[ri, i] - v[rj, i]) / max(difference_stderr(s[ri], s[rj], per_prompt[ri], per_prompt[rj])[i], 1e-12)
                for j, rj in vertex_row.items() if j != i]
        if gaps:
            out[i] = min(gaps)
    return out
