"""Front plots: a static PNG (matplotlib, Agg, no pyplot state) and a standalone HTML (plotly, JS embedded).

matplotlib and plotly are imported inside the functions only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .metrics import hypervolume, non_dominated_mask
from .types import Front, FrontPoint

__all__ = ["plot_front_png", "plot_front_html", "BASE_LABEL"]

_COLORS = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip
_DIM_ALPHA = 0.3
BASE_LABEL = "base model"  # legend entry (and plotly trace name) of the base model's point


def _check(fronts: Any) -> tuple[list[Front], tuple[str, ...]]:
    if isinstance(fronts, Front):
        fronts = [fronts]
    fronts = list(fronts)
    if not fronts:
        raise ValueError("fronts: need at least one Front to plot")
    for i, f in enumerate(fronts):
        if not isinstance(f, Front):
            raise ValueError(f"fronts[{i}]: expected Front, got {type(f).__name__}")
    objectives = fronts[0].objectives
    for i, f in enumerate(fronts[1:], start=1):
        if f.objectives != objectives:
            raise ValueError(f"fronts[{i}]: objectives {f.objectives} differ from {objectives}")
    if len(objectives) < 2:
        raise ValueError(f"fronts: need at least 2 objectives to plot a front, got {len(objectives)}")
    return fronts, objectives


def _oracle_values(oracle_front: Any, k: int) -> np.ndarray | None:
    """Accept ``(weights, values)``, a ``Front``, or an ``(M, K)`` values array."""
    if oracle_front is None:
        return None
    if isinstance(oracle_front, Front):
        vals = oracle_front.values()
    elif isinstance(oracle_front, tuple) and len(oracle_front) == 2:
        vals = np.asarray(oracle_front[1], dtype=float)
    else:
        vals = np.asarray(oracle_front, dtype=float)
    if vals.ndim != 2 or vals.shape[1] != k:
        raise ValueError(f"oracle_front: values must have shape (M, {k}), got {vals.shape}")
    return vals[np.lexsort(vals.T[::-1])]


def _bases(fronts: list[Front]) -> list[tuple[FrontPoint, list[int]]]:
    """The distinct base points, each with the indices of the fronts that carry it: a base point shared by
    several fronts (the same values and standard errors) is drawn once."""
    found: dict[tuple, tuple[FrontPoint, list[int]]] = {}
    for c, f in enumerate(fronts):
        if f.base_point is not None:
            key = (f.base_point.values, f.base_point.stderr)
            found.setdefault(key, (f.base_point, []))[1].append(c)
    return list(found.values())


def _base_edge(bases: list, owners: list[int]) -> str:
    # One base for every front: all black. Several: each edged in the colour of the (first) front it belongs to.
    return "black" if len(bases) == 1 else _COLORS[owners[0] % len(_COLORS)]


def _hv(front: Front) -> float:
    hv = front.metrics.get("hypervolume")
    return float(hv) if hv is not None else hypervolume(front.values(), front.reference_point)


def _label(front: Front) -> str:
    return f"{front.method} (HV={_hv(front):.4g})"


def _title(fronts: list[Front]) -> str:
    # Several fronts: the legend carries each one's hypervolume, so the title stays short enough to fit.
    if len(fronts) == 1:
        return f"Pareto front — {_label(fronts[0])}"
    scorers = {f.scorer for f in fronts}
    scored = f"{scorers.pop()} scores; " if len(scorers) == 1 else ""
    return f"{len(fronts)} Pareto fronts ({scored}hypervolume in the legend)"


def _prepare(path: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


class _Drawn(NamedTuple):
    """A front to draw: its colour, values, standard errors and layers (point indices, dominated?): the
    non-dominated points, then the dominated ones (drawn faded), empty layers left out."""

    front: Front
    color: str
    values: np.ndarray
    stderr: np.ndarray
    nondominated: np.ndarray
    layers: list[tuple[np.ndarray, bool]]


def _drawn(fronts: list[Front]) -> Iterator[_Drawn]:
    """The fronts that have points, in order, with their colours (by position in `fronts`)."""
    for c, front in enumerate(fronts):
        if not front.points:
            continue
        v, s = front.values(), front.stderr()
        nd = non_dominated_mask(v)
        layers = [(np.flatnonzero(sel), dominated) for sel, dominated in ((nd, False), (~nd, True)) if sel.any()]
        yield _Drawn(front, _COLORS[c % len(_COLORS)], v, s, nd, layers)


# --------------------------------------------------------------------------------------------- matplotlib
def _draw_2d(ax: Any, fronts: list[Front], oracle: np.ndarray | None, i: int, j: int, names: tuple) -> None:
    bases = _bases(fronts)
    if oracle is not None:
        o = oracle[np.argsort(oracle[:, i], kind="stable")]
        if oracle.shape[1] == 2:  # a curve; for K >= 3 a projection is a cloud, so points only
            ax.plot(o[:, i], o[:, j], "-", color="0.75", lw=1.5, zorder=1, label="oracle front")
            ax.scatter(o[:, i], o[:, j], s=6, color="0.75", zorder=1)
        else:
            ax.scatter(o[:, i], o[:, j], s=6, color="0.75", zorder=1, label="oracle front")
    for d in _drawn(fronts):
        v, s = d.values, d.stderr
        for idx, dominated in d.layers:
            ax.errorbar(v[idx, i], v[idx, j], xerr=s[idx, i], yerr=s[idx, j], fmt="o", ms=5, color=d.color,
                        alpha=_DIM_ALPHA if dominated else 1.0, elinewidth=0.8, capsize=2,
                        label=None if dominated else _label(d.front), zorder=3)
        if d.front.k == 2:  # join the non-dominated points along the front
            nd = d.nondominated
            pts = v[nd][np.argsort(v[nd][:, i], kind="stable")]
            ax.plot(pts[:, i], pts[:, j], "-", color=d.color, lw=1, alpha=0.6, zorder=2)
    for n, (bp, owners) in enumerate(bases):  # where training started: the base model's point
        ax.errorbar([bp.values[i]], [bp.values[j]], xerr=[bp.stderr[i]], yerr=[bp.stderr[j]], fmt="s", ms=7,
                    mfc="black", mec=_base_edge(bases, owners), mew=1.5, ecolor="0.35", elinewidth=1, capsize=3,
                    label=BASE_LABEL if n == 0 else None, zorder=4)
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.grid(True, alpha=0.3)


def _draw_3d(ax3: Any, fronts: list[Front], oracle: np.ndarray | None, names: tuple) -> None:
    if oracle is not None:
        ax3.scatter(oracle[:, 0], oracle[:, 1], oracle[:, 2], s=4, color="0.75", label="oracle front")
    for d in _drawn(fronts):
        v, s = d.values, d.stderr
        for idx, dominated in d.layers:
            ax3.errorbar(v[idx, 0], v[idx, 1], v[idx, 2], xerr=s[idx, 0], yerr=s[idx, 1], zerr=s[idx, 2], fmt="o",
                         ms=4, color=d.color, alpha=_DIM_ALPHA if dominated else 1.0, elinewidth=0.6,
                         label=None if dominated else _label(d.front))
    bases = _bases(fronts)
    for n, (bp, owners) in enumerate(bases):
        (x, y, z), (sx, sy, sz) = bp.values, bp.stderr
        ax3.errorbar([x], [y], [z], xerr=[sx], yerr=[sy], zerr=[sz], fmt="s", ms=6, mfc="black",
                     mec=_base_edge(bases, owners), ecolor="0.35", elinewidth=0.8,
                     label=BASE_LABEL if n == 0 else None)
    ax3.set_xlabel(names[0])
    ax3.set_ylabel(names[1])
    ax3.set_zlabel(names[2])
    ax3.legend(fontsize=7, loc="upper left")


def _panels_figure(fronts: list[Front], oracle: np.ndarray | None, names: tuple) -> Any:
    """K >= 3: a 3-D panel first when K = 3, then every pairwise projection, two or three panels a row."""
    from matplotlib.figure import Figure

    k = len(names)
    pairs = list(itertools.combinations(range(k), 2))
    n_panels = len(pairs) + (1 if k == 3 else 0)
    ncols = 2 if n_panels <= 4 else 3
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.8 * nrows))
    start = 1
    if k == 3:
        import mpl_toolkits.mplot3d  # noqa: F401  (registers the 3d projection)

        _draw_3d(fig.add_subplot(nrows, ncols, 1, projection="3d"), fronts, oracle, names)
        start = 2
    for n, (i, j) in enumerate(pairs):
        ax = fig.add_subplot(nrows, ncols, start + n)
        _draw_2d(ax, fronts, oracle, i, j, names)
        if k != 3 and n == 0:
            ax.legend(fontsize=7, loc="best")
    return fig


def plot_front_png(fronts: Any, path: Any, oracle_front: Any = None, *, dpi: int = 120) -> Path:
    """Write a PNG of one or more fronts (all objectives maximised).

    K = 2: one scatter. K = 3: a 3-D scatter plus the three pairwise projections (2x2). K >= 4: all pairwise
    projections. Error bars are the per-point standard errors; dominated points are drawn faded; the oracle
    front, ``(weights, values)`` (or a values array / ``Front``; None when the task has none), is a light grey
    line/scatter. Each front's ``base_point`` is a black square with its error bars ("base model" in the
    legend; a base point shared by several fronts is drawn once). The title carries each front's hypervolume.
    Returns the path written.
    """
    fronts, names = _check(fronts)
    oracle = _oracle_values(oracle_front, len(names))
    from matplotlib.figure import Figure

    title = _title(fronts)
    if len(names) == 2:
        fig = Figure(figsize=(6.5, 5.5))
        ax = fig.add_subplot(1, 1, 1)
        _draw_2d(ax, fronts, oracle, 0, 1, names)
        ax.legend(fontsize=8, loc="best")
    else:
        fig = _panels_figure(fronts, oracle, names)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = _prepare(path)
    fig.savefig(out, dpi=dpi, format="png")
    return out


# ------------------------------------------------------------------------------------------------- plotly
def _hover_values(objectives: tuple[str, ...], point: FrontPoint) -> str:
    """One `name: value ± stderr` line per objective, and the model URI when there is one."""
    vals = "<br>".join(f"{name}: {v:.4g} ± {s:.2g}"
                       for name, v, s in zip(objectives, point.values, point.stderr, strict=True))
    uri = f"<br>{point.model_uri}" if point.model_uri else ""
    return vals + uri


def _hover(front: Front, idx: np.ndarray) -> list[str]:
    texts = []
    for n in idx:
        p = front.points[int(n)]
        lam = ", ".join(f"{x:.2f}" for x in p.weights)
        texts.append(f"{front.method}<br>λ=({lam})<br>{_hover_values(front.objectives, p)}")
    return texts


def _base_hover(bp: FrontPoint, fronts: list[Front], owners: list[int]) -> str:
    return (f"{BASE_LABEL} (untrained) of {', '.join(fronts[c].method for c in owners)}"
            f"<br>{_hover_values(fronts[0].objectives, bp)}")


def _base_traces(go: Any, fronts: list[Front], k: int, names: tuple) -> list:
    traces = []
    bases = _bases(fronts)
    for n, (bp, owners) in enumerate(bases):
        v, s = bp.values, bp.stderr
        common = dict(name=BASE_LABEL, legendgroup=BASE_LABEL, showlegend=n == 0,
                      hovertext=[_base_hover(bp, fronts, owners)], hoverinfo="text")
        marker = dict(size=10 if k == 2 else 5 if k == 3 else 8, color="black", symbol="square",
                      line=dict(color=_base_edge(bases, owners), width=2))
        bars = dict(type="data", visible=True, color="#555555")
        if k == 2:
            traces.append(go.Scatter(x=[v[0]], y=[v[1]], mode="markers", marker=marker,
                                     error_x=dict(array=[s[0]], **bars), error_y=dict(array=[s[1]], **bars),
                                     **common))
        elif k == 3:
            traces.append(go.Scatter3d(x=[v[0]], y=[v[1]], z=[v[2]], mode="markers", marker=marker,
                                       error_x=dict(array=[s[0]], **bars), error_y=dict(array=[s[1]], **bars),
                                       error_z=dict(array=[s[2]], **bars), **common))
        else:
            traces.append(go.Splom(dimensions=[dict(label=name, values=[v[i]]) for i, name in enumerate(names)],
                                   marker=marker, **common))
    return traces


def _oracle_trace(go: Any, oracle: np.ndarray, names: tuple) -> Any:
    k = len(names)
    if k == 2:
        return go.Scatter(x=oracle[:, 0], y=oracle[:, 1], mode="lines+markers", name="oracle front",
                          line=dict(color="lightgray"), marker=dict(size=3, color="lightgray"))
    if k == 3:
        return go.Scatter3d(x=oracle[:, 0], y=oracle[:, 1], z=oracle[:, 2], mode="markers", name="oracle front",
                            marker=dict(size=2, color="lightgray"))
    return go.Splom(dimensions=[dict(label=n, values=oracle[:, i]) for i, n in enumerate(names)],
                    name="oracle front", marker=dict(size=3, color="lightgray"))


def _front_trace(go: Any, d: _Drawn, idx: np.ndarray, dominated: bool, names: tuple) -> Any:
    """One layer of a front (its non-dominated or its dominated points) as one trace."""
    v, s, k = d.values, d.stderr, len(names)
    opacity = _DIM_ALPHA if dominated else 1.0
    common = dict(name=_label(d.front) + (" (dominated)" if dominated else ""), legendgroup=d.front.method,
                  hovertext=_hover(d.front, idx), hoverinfo="text")
    if k == 2:
        return go.Scatter(x=v[idx, 0], y=v[idx, 1], mode="markers", opacity=opacity,
                          marker=dict(size=8, color=d.color),
                          error_x=dict(type="data", array=s[idx, 0], visible=True),
                          error_y=dict(type="data", array=s[idx, 1], visible=True), **common)
    if k == 3:
        return go.Scatter3d(x=v[idx, 0], y=v[idx, 1], z=v[idx, 2], mode="markers", opacity=opacity,
                            marker=dict(size=4, color=d.color),
                            error_x=dict(type="data", array=s[idx, 0], visible=True),
                            error_y=dict(type="data", array=s[idx, 1], visible=True),
                            error_z=dict(type="data", array=s[idx, 2], visible=True), **common)
    return go.Splom(dimensions=[dict(label=n, values=v[idx, i]) for i, n in enumerate(names)], opacity=opacity,
                    marker=dict(size=6, color=d.color), **common)


def plot_front_html(fronts: Any, path: Any, oracle_front: Any = None) -> Path:
    """Write a standalone interactive HTML of one or more fronts (plotly.js embedded, works offline).

    K = 2: ``Scatter`` with error bars; K = 3: ``Scatter3d`` with error bars; K >= 4: a scatter matrix
    (``Splom``). Non-dominated points are opaque, dominated ones faded. Each front's ``base_point`` is a black
    square trace named "base model" (drawn once when fronts share it). Returns the path written.
    """
    fronts, names = _check(fronts)
    k = len(names)
    oracle = _oracle_values(oracle_front, k)
    import plotly.graph_objects as go

    fig = go.Figure()
    if oracle is not None:
        fig.add_trace(_oracle_trace(go, oracle, names))
    for d in _drawn(fronts):
        for idx, dominated in d.layers:
            fig.add_trace(_front_trace(go, d, idx, dominated, names))
    for trace in _base_traces(go, fronts, k, names):
        fig.add_trace(trace)
    title = _title(fronts)
    if k == 2:
        fig.update_layout(xaxis_title=names[0], yaxis_title=names[1])
    elif k == 3:
        fig.update_layout(scene=dict(xaxis_title=names[0], yaxis_title=names[1], zaxis_title=names[2]))
    fig.update_layout(title=title, template="plotly_white", legend=dict(font=dict(size=10)))
    out = _prepare(path)
    fig.write_html(str(out), include_plotlyjs=True, full_html=True)
    return out
