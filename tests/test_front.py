"""Tests for pareto.front: metrics, grids, the Front type and plots."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pareto.front import (
    Front,
    FrontPoint,
    dominates,
    front_metrics,
    hypervolume,
    igd,
    igd_plus,
    inner_product,
    non_dominated_mask,
    parse_weights,
    plot_front_html,
    plot_front_png,
    preference_grid,
    sample_preferences,
    spacing,
    sparsity,
    validate_weights,
)

# ------------------------------------------------------------------------------------------ strategies
# Small integer-valued grids give many ties and duplicates, which is where dominance code goes wrong.
_coords = st.integers(min_value=-4, max_value=4).map(float)


def _value_sets(k: int, min_size: int = 1, max_size: int = 25):
    return st.integers(min_size, max_size).flatmap(lambda n: arrays(np.float64, (n, k), elements=_coords))


def _brute_nd(values: np.ndarray) -> np.ndarray:
    n = len(values)
    return np.array([not any(dominates(values[j], values[i]) for j in range(n) if j != i) for i in range(n)])


def _brute_hv_2d(values: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume (maximisation) by summing strips along objective 0."""
    pts = values[np.all(values > ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    xs = np.unique(np.concatenate([[ref[0]], pts[:, 0]]))
    total = 0.0
    for lo, hi in zip(xs[:-1], xs[1:], strict=True):
        ys = pts[pts[:, 0] >= hi, 1]
        if len(ys):
            total += (hi - lo) * (ys.max() - ref[1])
    return total


# ------------------------------------------------------------------------------------------ dominance
def test_non_dominated_hand_case():
    v = np.array([[1, 3], [2, 2], [3, 1], [1, 1], [2, 2], [0, 3], [3, 0.5]], dtype=float)
    mask = non_dominated_mask(v)
    # (1,1) dominated by (2,2); (0,3) by (1,3); (3,0.5) by (3,1); both copies of (2,2) kept
    assert mask.tolist() == [True, True, True, False, True, False, False]


def test_non_dominated_empty_and_single():
    assert non_dominated_mask(np.zeros((0, 2))).tolist() == []
    assert non_dominated_mask(np.array([[5.0, -1.0]])).tolist() == [True]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4).flatmap(lambda k: _value_sets(k)))
def test_non_dominated_properties(values):
    mask = non_dominated_mask(values)
    kept, dropped = values[mask], values[~mask]
    assert mask.any()
    for p in kept:  # no kept point is dominated by anything
        assert not any(dominates(q, p) for q in values)
    for p in dropped:  # every dropped point is dominated by a kept one
        assert any(dominates(q, p) for q in kept)
    assert mask.tolist() == _brute_nd(values).tolist()


# ------------------------------------------------------------------------------------------ hypervolume
def test_hypervolume_hand_case():
    v = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(v, [0.0, 0.0]) == pytest.approx(6.0)
    assert hypervolume(v[:1], [0.0, 0.0]) == pytest.approx(3.0)
    # ref (0.5, 0.5): strips x in (0.5,1] h 2.5, (1,2] h 1.5, (2,3] h 0.5 -> 1.25 + 1.5 + 0.5
    assert hypervolume(v, [0.5, 0.5]) == pytest.approx(3.25)
    # ref (1, 1): (1,3) and (3,1) sit on the reference boundary and add nothing -> only (2,2)'s unit box
    assert hypervolume(v, [1.0, 1.0]) == pytest.approx(1.0)


def test_hypervolume_3d_hand_case():
    v = np.array([[1.0, 1.0, 1.0], [2.0, 0.5, 0.5]])
    # unit cube + extra slab x in (1,2], y,z in (0,0.5]: 1 + 0.25
    assert hypervolume(v, [0, 0, 0]) == pytest.approx(1.25)


def test_hypervolume_matches_pymoo_on_random_points():
    from pymoo.indicators.hv import HV

    rng = np.random.default_rng(0)
    for k in (2, 3, 4):
        v = rng.uniform(0.0, 1.0, size=(40, k))
        ref = np.full(k, -0.1)
        expected = HV(ref_point=-ref)(-v)
        assert hypervolume(v, ref) == pytest.approx(expected, rel=1e-12)
        assert hypervolume(v, ref) > 0


def test_point_not_dominating_reference_contributes_nothing():
    v = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    base = hypervolume(v, [0.0, 0.0])
    for bad in ([10.0, -1.0], [10.0, 0.0], [-1.0, 10.0], [0.0, 10.0]):
        assert hypervolume(np.vstack([v, bad]), [0.0, 0.0]) == pytest.approx(base)
        assert hypervolume(np.array([bad]), [0.0, 0.0]) == 0.0


def test_hypervolume_empty_and_bad_input():
    assert hypervolume(np.zeros((0, 2)), [0.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="reference_point"):
        hypervolume(np.ones((2, 2)), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        hypervolume(np.array([[np.nan, 1.0]]), [0.0, 0.0])


@settings(max_examples=60, deadline=None)
@given(_value_sets(2, min_size=0, max_size=15), arrays(np.float64, (2,), elements=_coords))
def test_hypervolume_2d_matches_brute_force_and_is_monotone(values, extra):
    ref = np.array([-5.0, -5.0])
    hv = hypervolume(values, ref)
    assert hv == pytest.approx(_brute_hv_2d(values, ref), abs=1e-9)
    hv2 = hypervolume(np.vstack([values, extra]), ref)
    assert hv2 >= hv - 1e-9


@settings(max_examples=40, deadline=None)
@given(_value_sets(3, min_size=1, max_size=15), arrays(np.float64, (3,), elements=_coords))
def test_hypervolume_3d_monotone_and_nd_invariant(values, extra):
    ref = np.full(3, -5.0)
    hv = hypervolume(values, ref)
    assert hypervolume(np.vstack([values, extra]), ref) >= hv - 1e-9
    # dominated points do not change the hypervolume
    assert hypervolume(values[non_dominated_mask(values)], ref) == pytest.approx(hv, abs=1e-9)


# ------------------------------------------------------------------------------------------ igd / others
def test_igd_self_is_zero_and_hand_case():
    f = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    assert igd(f, f) == 0.0
    # reference (0,0) and (3,4); values {(0,0)}: distances 0 and 5 -> mean 2.5
    assert igd(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(2.5)
    # extra values can only lower IGD
    assert igd(np.array([[0.0, 0.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [3.0, 4.0]])) == 0.0


def test_igd_matches_pymoo():
    from pymoo.indicators.igd import IGD

    rng = np.random.default_rng(1)
    ref, vals = rng.normal(size=(30, 3)), rng.normal(size=(12, 3))
    assert igd(vals, ref) == pytest.approx(IGD(ref)(vals), rel=1e-12)


def test_igd_plus_hand_case():
    ref = np.array([[1.0, 1.0]])
    # a point that dominates the reference-front point is at IGD+ distance 0 (IGD would not be)
    assert igd_plus(np.array([[2.0, 2.0]]), ref) == 0.0
    assert igd(np.array([[2.0, 2.0]]), ref) == pytest.approx(math.sqrt(2))
    assert igd_plus(np.array([[0.0, 2.0]]), ref) == pytest.approx(1.0)


def test_inner_product_hand_case():
    w = np.array([[1.0, 0.0], [0.5, 0.5]])
    v = np.array([[2.0, 9.0], [1.0, 3.0]])
    # <(1,0),(2,9)> = 2 ; <(.5,.5),(1,3)> = 2 -> mean 2
    assert inner_product(w, v) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shape"):
        inner_product(w[:1], v)


def test_spacing_hand_cases():
    even = np.array([[0.0, 3.0], [1.0, 2.0], [2.0, 1.0], [3.0, 0.0]])
    assert spacing(even) == pytest.approx(0.0, abs=1e-12)
    # 1-D along x at 0, 1, 3: d = (1, 1, 2), mean 4/3, sqrt(((1/3)^2*2 + (2/3)^2)/3) = sqrt(2)/3
    uneven = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    assert spacing(uneven) == pytest.approx(math.sqrt(2) / 3)
    assert spacing(np.array([[1.0, 1.0]])) == 0.0


def test_sparsity_hand_case():
    # non-dominated (0,2),(1,1),(2,0) in lexicographic order; (0,0) is dropped.
    v = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 1.0]])
    # steps: (1,-1),(1,-1) -> squared norms 2+2=4; / (K=2 * (N-1)=2) = 1
    assert sparsity(v) == pytest.approx(1.0)
    assert sparsity(v[:1]) == 0.0


def test_front_metrics_keys_and_values():
    w = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])
    v = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
    m = front_metrics(w, v, [0.0, 0.0])
    assert set(m) == {"hypervolume", "inner_product", "spacing", "sparsity", "n_points", "n_nondominated"}
    assert m["hypervolume"] == pytest.approx(6.0)
    assert m["n_points"] == 4 and m["n_nondominated"] == 3
    assert m["inner_product"] == pytest.approx((3 + 2 + 3 + 1) / 4)
    m2 = front_metrics(w, v, [0.0, 0.0], oracle_front=v[:3])
    assert m2["igd"] == 0.0 and m2["igd_plus"] == 0.0


# ------------------------------------------------------------------------------------------ grids
def test_grid_k2_step():
    g = preference_grid(2, n_points=11)
    assert g.shape == (11, 2)
    assert np.allclose(np.diff(g[:, 0]), 0.1)
    assert g[0].tolist() == [0.0, 1.0] and g[-1].tolist() == [1.0, 0.0]
    assert np.allclose(g.sum(axis=1), 1.0)
    assert np.array_equal(preference_grid(2, n_partitions=10), g)


@pytest.mark.parametrize("k,n_partitions,expected", [(3, 4, 15), (3, 12, 91), (4, 3, 20), (5, 2, 15)])
def test_grid_das_dennis(k, n_partitions, expected):
    g = preference_grid(k, n_partitions=n_partitions)
    assert g.shape == (expected, k)
    assert np.allclose(g.sum(axis=1), 1.0) and np.all(g >= 0)
    rows = {tuple(np.round(r, 9)) for r in g}
    for i in range(k):
        assert tuple(np.eye(k)[i]) in rows
    assert len(rows) == expected
    # deterministic, lexicographically sorted
    assert np.array_equal(g, preference_grid(k, n_partitions=n_partitions))
    assert np.array_equal(g[np.lexsort(g.T[::-1])], g)


def test_grid_k3_from_n_points():
    g = preference_grid(3, n_points=10)  # C(p+2,2) >= 10 -> p = 3 gives exactly 10
    assert g.shape == (10, 3)
    g = preference_grid(3, n_points=11)  # p = 4 -> 15
    assert g.shape == (15, 3)
    for v in np.eye(3):
        assert any(np.allclose(r, v) for r in g)


def test_grid_errors():
    with pytest.raises(ValueError, match="not both"):
        preference_grid(2, n_points=3, n_partitions=2)
    with pytest.raises(ValueError, match="n_points"):
        preference_grid(2, n_points=1)
    with pytest.raises(ValueError, match="k"):
        preference_grid(0)


@pytest.mark.parametrize(
    "w,k,needle",
    [
        ([0.5, 0.5], 3, "wrong length"),
        ([1.2, -0.2], 2, "negative"),
        ([float("nan"), 1.0], 2, "NaN"),
        ([float("inf"), 0.0], 2, "infinite"),
        ([0.5, 0.4], 2, "sum to 1"),
        ([[0.5, 0.5]], 2, "shape"),
        (["a", "b"], 2, "not numeric"),
    ],
)
def test_validate_weights_errors(w, k, needle):
    with pytest.raises(ValueError, match=needle) as exc:
        validate_weights(w, k)
    assert "\n" not in str(exc.value)


def test_validate_and_parse_ok():
    assert validate_weights([0.6, 0.3, 0.1], 3).tolist() == [0.6, 0.3, 0.1]
    assert validate_weights([0.5, 0.5 + 5e-7], 2).shape == (2,)
    assert parse_weights("0.6,0.3,0.1", 3).tolist() == [0.6, 0.3, 0.1]
    assert parse_weights(" [0.25, 0.75] ", 2).tolist() == [0.25, 0.75]


@pytest.mark.parametrize(
    "s,k,needle",
    [("0.6,abc,0.1", 3, "could not parse 'abc'"), ("", 2, "empty"), ("0.5,0.5", 3, "wrong length"),
     ("0.7,0.7", 2, "sum to 1")],
)  # fmt: skip
def test_parse_weights_errors(s, k, needle):
    with pytest.raises(ValueError, match=needle):
        parse_weights(s, k)


def test_sample_preferences():
    rng = np.random.default_rng(0)
    s = sample_preferences(rng, 3, 2000, vertex_prob=0.3)
    assert s.shape == (2000, 3)
    assert np.allclose(s.sum(axis=1), 1.0) and np.all(s >= 0)
    is_vertex = np.isclose(s.max(axis=1), 1.0)
    assert 0.25 < is_vertex.mean() < 0.35
    assert not np.isclose(sample_preferences(rng, 3, 500, 0.0).max(axis=1), 1.0).any()
    assert np.isclose(sample_preferences(rng, 2, 50, 1.0).max(axis=1), 1.0).all()
    a = sample_preferences(np.random.default_rng(5), 4, 10, 0.2)
    assert np.array_equal(a, sample_preferences(np.random.default_rng(5), 4, 10, 0.2))
    with pytest.raises(ValueError, match="vertex_prob"):
        sample_preferences(rng, 3, 5, 1.5)


# ------------------------------------------------------------------------------------------ Front type
def _front(k: int = 2, n: int = 7, method: str = "rs", dominated: bool = True) -> Front:
    grid = preference_grid(k, n_points=n)
    pts = []
    for i, w in enumerate(grid):
        vals = np.sqrt(w) + 0.01 * i  # a concave front
        pts.append(FrontPoint(tuple(w), tuple(vals), tuple(np.full(k, 0.02)), model_uri=f"runs:/{i}/m"))
    if dominated:
        bad = FrontPoint(tuple(grid[0]), tuple(np.full(k, 0.1)), tuple(np.full(k, 0.01)), extra={"x": 1})
        pts.append(bad)
    return Front(method, tuple(f"obj{j}" for j in range(k)), tuple(pts), tuple(np.zeros(k)), meta={"seed": 0})


def test_front_accessors_and_nondominated():
    f = _front()
    assert f.values().shape == (8, 2) and f.weights().shape == (8, 2) and f.stderr().shape == (8, 2)
    nd = f.nondominated()
    assert len(nd) == 7 and nd.method == "rs"
    assert f.nondominated_mask().tolist() == [True] * 7 + [False]


def test_front_compute_metrics_and_query():
    f = _front()
    m = f.compute_metrics(oracle_front=f.nondominated())
    assert f.metrics is not None and f.metrics["hypervolume"] == m["hypervolume"] > 0
    assert m["igd"] == 0.0 and m["n_nondominated"] == 7
    assert f.query([1.0, 0.0]).weights == (1.0, 0.0)
    assert f.query([0.0, 1.0]).weights == (0.0, 1.0)


def test_front_json_round_trip(tmp_path):
    f = _front(k=3, n=10)
    f.compute_metrics()
    g = Front.from_json(f.to_json())
    assert g == f
    assert g.values().tolist() == f.values().tolist()
    assert g.points[-1].extra == {"x": 1} and g.meta == {"seed": 0}
    f.save(tmp_path / "f.json")
    assert Front.load(tmp_path / "f.json") == f
    # exact floats survive
    h = Front("m", ("a", "b"), (FrontPoint((0.1, 0.9), (1 / 3, math.pi), (1e-17, 0.0)),), (-1.0, -1.0))
    assert Front.from_json(h.to_json()).points[0].values == (1 / 3, math.pi)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: d.pop("method"), "missing field 'method'"),
        (lambda d: d.update(method=3), "Front.method"),
        (lambda d: d.update(reference_point=[0.0]), "Front.reference_point"),
        (lambda d: d["points"][1].update(values=[1.0]), r"Front.points\[1\]"),
        (lambda d: d["points"][0].update(stderr=[0.1, -0.1]), r"Front.points\[0\].stderr"),
        (lambda d: d["points"][0].update(values=[float("nan"), 1.0]), r"Front.points\[0\].values"),
        (lambda d: d["points"][2].pop("weights"), r"Front.points\[2\]: missing field 'weights'"),
        (lambda d: d.update(bogus=1), "unknown field 'bogus'"),
        (lambda d: d.update(objectives="ab"), "Front.objectives"),
        (lambda d: d.update(metrics=[]), "Front.metrics"),
        (lambda d: d.update(schema="pareto.front/99"), "Front.schema"),
    ],
)
def test_front_from_dict_validation(mutate, needle):
    d = json.loads(_front().to_json())
    mutate(d)
    with pytest.raises(ValueError, match=needle):
        Front.from_dict(d)


def test_front_table():
    f = _front()
    f.compute_metrics()
    t = f.table()
    lines = t.splitlines()
    assert "obj0" in lines[1] and "obj1" in lines[1]
    rows = lines[3:-1]
    assert len(rows) == 8
    assert sum(r.rstrip().endswith("*") for r in rows) == 7
    assert "±" in rows[0]
    assert lines[-1].startswith("hypervolume=")
    assert len({len(r.rstrip(" *")) for r in rows}) == 1  # fixed width


def test_front_package_does_not_import_heavy_deps():
    code = (
        "import sys, pareto.front; "
        "heavy = ('torch', 'ray', 'mlflow', 'streamlit', 'matplotlib', 'plotly'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------------------------------ plots
@pytest.mark.parametrize("k", [2, 3, 4])
def test_plots_written(tmp_path, k):
    a, b = _front(k=k, n=6, method="a"), _front(k=k, n=6, method="b")
    oracle_vals = np.sqrt(preference_grid(k, n_points=30))
    oracle = (preference_grid(k, n_points=30), oracle_vals)
    png = plot_front_png([a, b], tmp_path / "sub" / "front.png", oracle_front=oracle)
    assert png.exists() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = plot_front_html([a, b], tmp_path / "front.html", oracle_front=oracle)
    text = html.read_text(encoding="utf-8")
    assert html.stat().st_size > 1_000_000  # plotly.js embedded, no CDN
    assert '<script src="https://cdn.plot.ly' not in text and "Plotly.newPlot" in text


def test_plot_rejects_mismatched_objectives(tmp_path):
    with pytest.raises(ValueError, match="objectives"):
        plot_front_png([_front(k=2), _front(k=3)], tmp_path / "x.png")
