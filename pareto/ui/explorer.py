"""Pure helpers of the front explorer: simplex sliders, the served point, plotly figures.

No Streamlit and no MLflow here, so the logic is unit-tested without a page or a tracking store.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from pareto.front.plot import BASE_LABEL
from pareto.front.types import Front, FrontPoint

STEP = 0.01  # slider resolution; weights live on this grid so the displayed values add up to exactly 1
SERVED = "serves λ"  # trace name of the highlighted point (tests look it up)
ANSWER = "your answer (oracle)"
ANSWER_RM = "your answer (reward model)"  # on a front scored by the reward model (no oracle)
ORACLE = "oracle front"
BASE = BASE_LABEL  # the base (untrained) model's point: where training started
_BLUE, _RED, _GREY, _GREEN, _BLACK = "#1f77b4", "#d62728", "#9a9a9a", "#2ca02c", "#000000"
_DIM = 0.25


def _units(step: float) -> int:
    units = round(1 / step)
    if units < 1 or abs(units * step - 1) > 1e-9:
        raise ValueError(f"step: must divide 1 evenly (like 0.01), got {step}")
    return units


def equal_weights(k: int, step: float = STEP) -> tuple[float, ...]:
    """The simplex centre on the `step` grid (leftover units go to the first objectives)."""
    if k < 1:
        raise ValueError(f"k: need at least one objective, got {k}")
    units = _units(step)
    base, extra = divmod(units, k)
    return tuple((base + (1 if i < extra else 0)) / units for i in range(k))


def renormalise(weights: Sequence[float], index: int, value: float, step: float = STEP) -> tuple[float, ...]:
    """Set weight `index` to `value` and rescale the others proportionally, so the K weights sum to 1.

    The others keep their ratios (equal shares when they are all zero). Everything is counted in units of
    `step` with largest-remainder rounding, so the displayed values are on the slider grid and add up to
    exactly 1, never 0.99 or 1.01.
    """
    k = len(weights)
    if not 0 <= index < k:
        raise ValueError(f"index: {index} is not one of the {k} objectives")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"value: a weight must be in [0, 1], got {value}")
    units = _units(step)
    if k == 1:
        return (1.0,)
    mine = round(value * units)
    rest = units - mine
    others = [i for i in range(k) if i != index]
    # Integer arithmetic (weights counted in 1/1000 of a step), so equal remainders really tie.
    old = [max(round(float(weights[i]) * units * 1000), 0) for i in others]
    if sum(old) == 0:
        old = [1] * len(others)
    total = sum(old)
    floors = [o * rest // total for o in old]
    # Largest remainders take the units rounding left over (ties: the earlier objective).
    by_remainder = sorted(range(len(others)), key=lambda j: (-(old[j] * rest % total), j))
    for j in by_remainder[: rest - sum(floors)]:
        floors[j] += 1
    out = [0] * k
    out[index] = mine
    for j, i in enumerate(others):
        out[i] = floors[j]
    return tuple(u / units for u in out)


def on_grid(weights: Sequence[float], step: float = STEP) -> bool:
    """True when `weights` are on the `step` grid and sum to exactly 1 in grid units."""
    units = _units(step)
    scaled = [w * units for w in weights]
    return all(abs(s - round(s)) < 1e-6 and s >= -1e-9 for s in scaled) and sum(round(s) for s in scaled) == units


def format_weights(names: Sequence[str], weights: Sequence[float]) -> str:
    """`λ = helpful 0.80 · concise 0.20  (Σ = 1.00)`: what the page shows under the sliders."""
    parts = " · ".join(f"{n} **{w:.2f}**" for n, w in zip(names, weights, strict=True))
    return f"λ = {parts}  (Σ = {sum(weights):.2f})"


def served_index(front: Front, weights: Sequence[float], point: object = None) -> int:
    """The index of the evaluated point that stands for λ on the chart.

    A per-weight method serves λ with one of its points (`point`, from the front query); a conditioned
    model serves λ itself, so the chart marks its evaluated λ nearest to the one asked (L1, ties: earliest).
    """
    if point is not None:
        return front.points.index(point)
    dist = np.abs(front.weights() - np.asarray(weights, dtype=float)).sum(axis=1)
    return int(np.argmin(dist))


def _hover(front: Front, i: int) -> str:
    p = front.points[i]
    lam = ", ".join(f"{w:.2f}" for w in p.weights)
    vals = "<br>".join(f"{n}: {v:.3f} ± {s:.3f}" for n, v, s in zip(front.objectives, p.values, p.stderr,
                                                                   strict=True))
    return f"λ = ({lam})<br>{vals}<br>{p.model_uri}"


def _base_hover(front: Front) -> str:
    b = front.base_point
    vals = "<br>".join(f"{n}: {v:.3f} ± {s:.3f}" for n, v, s in zip(front.objectives, b.values, b.stderr,
                                                                   strict=True))
    return f"{BASE} (untrained)<br>{vals}" + (f"<br>{b.model_uri}" if b.model_uri else "")


def _scatter(values: np.ndarray, k: int, **kw) -> go.Scatter | go.Scatter3d:
    cols = [values[:, i].tolist() for i in range(k)]  # lists, not arrays: plotly would base64-encode arrays
    if k == 2:
        return go.Scatter(x=cols[0], y=cols[1], **kw)
    return go.Scatter3d(x=cols[0], y=cols[1], z=cols[2], **kw)


def views(k: int) -> list[str]:
    """Chart kinds for K objectives: a scatter where it can be drawn, parallel coordinates always."""
    return (["2-D scatter"] if k == 2 else ["3-D scatter"] if k == 3 else []) + ["parallel coordinates"]


def _add_base(fig: go.Figure, point: FrontPoint, k: int, hover: str, *, edge: str = _BLACK,
              showlegend: bool = True) -> None:
    """The base model's point: a black square with its error bars (one legend entry, "base model")."""
    bars = [{"type": "data", "array": [s], "visible": True, "color": "#555555"} for s in point.stderr]
    errors = {"error_x": bars[0], "error_y": bars[1]} | ({"error_z": bars[2]} if k == 3 else {})
    fig.add_trace(_scatter(np.asarray([point.values], dtype=float), k, mode="markers", name=BASE,
                           legendgroup=BASE, showlegend=showlegend, hovertext=[hover], hoverinfo="text",
                           marker={"size": 12 if k == 2 else 6, "color": _BLACK, "symbol": "square",
                                   "line": {"color": edge, "width": 2}}, **errors))


def front_figure(front: Front, view: str, highlight: int | None = None, oracle: Sequence | None = None,
                 answer: Sequence[float] | None = None, answer_name: str = ANSWER) -> go.Figure:
    """One method's front: non-dominated points bold, dominated ones dimmed, the oracle front in grey (when the
    task has one), the base model's point as a black square, the point serving λ as a red star and the last
    answer's scores (by the front's scorer) as a green diamond named `answer_name`."""
    k, names = front.k, front.objectives
    values, mask = front.values(), front.nondominated_mask()
    hv = front.metrics.get("hypervolume", front.hypervolume())
    scored = "" if front.scorer == "oracle" else f", {front.scorer.replace('_', ' ')} scores"
    title = f"{front.method}: hypervolume {hv:.4f} ({int(mask.sum())}/{len(mask)} non-dominated{scored})"
    if view == "parallel coordinates":
        return _parallel(front, highlight, title)
    if view not in views(k):
        raise ValueError(f"view: {view!r} is not available for {k} objectives; choose one of {views(k)}")
    fig = go.Figure()
    _add_oracle(fig, oracle, k)
    hover = [_hover(front, i) for i in range(len(front))]
    for label, keep, opacity in (("non-dominated", mask, 1.0), ("dominated", ~mask, _DIM)):
        idx = np.flatnonzero(keep)
        if len(idx):
            fig.add_trace(_scatter(values[idx], k, mode="markers", name=f"{front.method} {label}",
                                   opacity=opacity, marker={"size": 11 if k == 2 else 7, "color": _BLUE},
                                   hovertext=[hover[i] for i in idx], hoverinfo="text"))
    if front.base_point is not None:
        _add_base(fig, front.base_point, k, _base_hover(front))
    if highlight is not None:
        # 2-D: an open star around the point; 3-D markers draw no outline, so a solid red one on top.
        marker = ({"size": 20, "color": "rgba(0,0,0,0)", "symbol": "star", "line": {"color": _RED, "width": 3}}
                  if k == 2 else {"size": 11, "color": _RED, "symbol": "diamond"})
        fig.add_trace(_scatter(values[[highlight]], k, mode="markers", name=SERVED, marker=marker,
                               hovertext=[hover[highlight]], hoverinfo="text"))
    if answer is not None:
        fig.add_trace(_scatter(np.asarray([answer], dtype=float), k, mode="markers", name=answer_name,
                               marker={"size": 14 if k == 2 else 7, "color": _GREEN, "symbol": "diamond"}))
    axes = {"xaxis_title": names[0], "yaxis_title": names[1]}
    if k == 3:
        fig.update_layout(scene=_scene(names))
        axes = {}
    fig.update_layout(title=title, height=520, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      legend={"orientation": "h", "y": -0.15}, **axes)
    return fig


def _add_oracle(fig: go.Figure, oracle: Sequence | None, k: int) -> None:
    """The oracle front in grey under the measured points: a line for 2 objectives, a point cloud for 3."""
    if oracle is None or not len(oracle):
        return
    o = np.asarray(oracle, dtype=float)
    o = o[np.argsort(o[:, 0], kind="stable")]
    fig.add_trace(_scatter(o, k, mode="lines" if k == 2 else "markers", name=ORACLE,
                           line={"color": _GREY, "width": 2} if k == 2 else None,
                           marker={"size": 2, "color": _GREY} if k == 3 else None, hoverinfo="skip"))


def _scene(names: Sequence[str]) -> dict:
    # A cube seen from the (+, +, +) octant: the front's corner (all objectives high) faces the viewer.
    return {"xaxis_title": names[0], "yaxis_title": names[1], "zaxis_title": names[2], "aspectmode": "cube",
            "camera": {"eye": {"x": 1.5, "y": 1.5, "z": 0.95}}}


BASE_LAMBDA = -0.25  # where the base model's line crosses the λ axes of the parallel coordinates (tick "base")


def _parallel(front: Front, highlight: int | None, title: str) -> go.Figure:
    # Parcoords has no per-line opacity: colour encodes the class (dominated grey, front blue, served red, and
    # the base model black, listed last). The base model has no λ: it crosses the λ axes at a tick "base" below 0.
    mask = front.nondominated_mask().astype(float)
    if highlight is not None:
        mask[highlight] = 2.0
    values, weights = front.values(), front.weights()
    colorscale = [[0, "#d0d0d0"], [0.5, _BLUE], [1, _RED]]
    lam_axis: dict = {"range": [0, 1]}
    if front.base_point is not None:
        mask = np.append(mask, 3.0)
        values = np.vstack([values, front.base_point.values])
        weights = np.vstack([weights, np.full(front.k, BASE_LAMBDA)])
        colorscale = [[0, "#d0d0d0"], [1 / 3, _BLUE], [2 / 3, _RED], [1, _BLACK]]
        lam_axis = {"range": [BASE_LAMBDA, 1], "tickvals": [BASE_LAMBDA, 0, 0.25, 0.5, 0.75, 1],
                    "ticktext": [BASE, "0", "0.25", "0.5", "0.75", "1"]}
    dims = [{"label": f"λ {n}", "values": weights[:, i].tolist(), **lam_axis}
            for i, n in enumerate(front.objectives)]
    dims += [{"label": n, "values": values[:, i].tolist()} for i, n in enumerate(front.objectives)]
    line = {"color": mask.tolist(), "cmin": 0, "cmax": 3 if front.base_point is not None else 2,
            "colorscale": colorscale, "showscale": False}
    fig = go.Figure(go.Parcoords(line=line, dimensions=dims))
    fig.update_layout(title=title, height=460, margin={"l": 60, "r": 60, "t": 80, "b": 30})
    return fig


def overlay_figure(fronts: Sequence[tuple[str, Front]], oracle: Sequence | None = None) -> go.Figure:
    """Several runs' fronts on one chart (K = 2 or 3): each labelled `run · method HV=…`, dominated points dimmed,
    and their base points (black squares, "base model" once in the legend; fronts sharing a base point share
    one marker; several distinct ones are edged in the colour of the first front that carries each)."""
    k = fronts[0][1].k
    if k not in (2, 3):
        raise ValueError(f"fronts: an overlay is drawn for 2 or 3 objectives, got {k}")
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    fig = go.Figure()
    _add_oracle(fig, oracle, k)
    for n, (label, front) in enumerate(fronts):
        values, mask = front.values(), front.nondominated_mask()
        color = palette[n % len(palette)]
        hv = front.metrics.get("hypervolume", front.hypervolume())
        for part, keep, opacity in (("", mask, 1.0), (" (dominated)", ~mask, _DIM)):
            idx = np.flatnonzero(keep)
            if len(idx):
                name = f"{label} · {front.method} HV={hv:.3f}{part}"
                fig.add_trace(_scatter(values[idx], k, mode="markers", name=name, opacity=opacity,
                                       marker={"size": 10 if k == 2 else 5, "color": color},
                                       hovertext=[_hover(front, i) for i in idx], hoverinfo="text"))
    bases: dict[tuple, tuple[FrontPoint, list[int]]] = {}
    for n, (_, front) in enumerate(fronts):
        if front.base_point is not None:
            bases.setdefault((front.base_point.values, front.base_point.stderr), (front.base_point, []))[1].append(n)
    for m, (point, owners) in enumerate(bases.values()):
        whose = ", ".join(f"{fronts[n][0]} · {fronts[n][1].method}" for n in owners)
        hover = _base_hover(fronts[owners[0]][1]) + f"<br>of {whose}"
        _add_base(fig, point, k, hover, edge=_BLACK if len(bases) == 1 else palette[owners[0] % len(palette)],
                  showlegend=m == 0)
    names = fronts[0][1].objectives
    if k == 3:
        fig.update_layout(scene=_scene(names))
    else:
        fig.update_layout(xaxis_title=names[0], yaxis_title=names[1])
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h"})
    return fig


def points_table(front: Front, highlight: int | None = None) -> list[dict]:
    """The front's points as rows for a table: the base model first (point "base") when the front has one,
    then each point with its λ, values ± standard errors, whether it is non-dominated and (with a base point)
    its gain over the base per objective in standard errors."""
    names, mask = front.objectives, front.nondominated_mask()
    base = front.base_point
    gains = front.gain_over_base() if base is not None else None

    def values(p: FrontPoint) -> dict:
        return {n: f"{v:.3f} ± {s:.3f}" for n, v, s in zip(names, p.values, p.stderr, strict=True)}

    rows = []
    if base is not None:
        rows.append({"point": "base", "λ": "— (untrained)", **values(base),
                     **{f"{n} vs base (SE)": "" for n in names}, "non-dominated": ""})
    for i, p in enumerate(front.points):
        row = {"point": f"{i} (serves λ)" if i == highlight else str(i),
               "λ": "(" + ", ".join(f"{w:.2f}" for w in p.weights) + ")", **values(p)}
        if gains is not None:
            row |= {f"{n} vs base (SE)": f"{g:+.1f}" for n, g in zip(names, gains[i], strict=True)}
        rows.append(row | {"non-dominated": "yes" if mask[i] else "no"})
    return rows


def base_gain_text(front: Front, index: int) -> str | None:
    """`vs the base model: helpful +0.210 (+4.2 SE) · concise −0.030 (−0.6 SE)` for point `index`; None
    without a base point."""
    if front.base_point is None:
        return None
    gain = front.gain_over_base()[index]
    delta = np.asarray(front.points[index].values) - np.asarray(front.base_point.values)
    parts = " · ".join(f"{n} {d:+.3f} ({g:+.1f} SE)" for n, d, g in zip(front.objectives, delta, gain, strict=True))
    return f"vs the base model: {parts}"


def cost_figure(rows: Sequence[dict]) -> go.Figure:
    """Hypervolume against training compute, one marker per (run, method): what a front costs."""
    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        fig.add_trace(go.Scatter(x=[r["training CPU-s"] for r in mine], y=[r["hypervolume"] for r in mine],
                                 mode="markers", name=method, marker={"size": 12},
                                 hovertext=[r["run"] for r in mine]))
    fig.update_layout(xaxis_title="training CPU-seconds", yaxis_title="hypervolume", height=360,
                      margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig
