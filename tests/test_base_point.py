"""The base model's point on every front: the `Front.base_point` type (round trip, old JSON, validation, kept out
of the metrics), the plots, the explorer's figures and page on a reward-model-only run with no oracle, and the
`pareto front` / `pareto compare` commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pareto import serving, tracking
from pareto.front import Front, FrontPoint, plot_front_html, plot_front_png, preference_grid
from pareto.ui import explorer as ex
from tests.test_ui import APP, TIMEOUT, chart, trace

BASE = FrontPoint.base((0.1, 0.2), (0.03, 0.04), model_uri="runs:/r/base_model")


def _front(base: FrontPoint | None = BASE, method: str = "m", scorer: str = "oracle") -> Front:
    pts = (FrontPoint((1.0, 0.0), (0.8, 0.2), (0.04, 0.0)), FrontPoint((0.5, 0.5), (0.5, 0.5), (0.0, 0.0)),
           FrontPoint((0.0, 1.0), (0.2, 0.8), (0.0, 0.03)), FrontPoint((0.5, 0.5), (0.3, 0.3), (0.01, 0.01)))
    return Front(method, ("a", "b"), pts, (0.0, 0.0), scorer=scorer, meta={"seed": 0}, base_point=base)


# ------------------------------------------------------------------------------------------------ the type
def test_round_trip_with_and_without_base_point(tmp_path: Path) -> None:
    f = _front()
    f.compute_metrics()
    assert f.base_point.is_base and f.base_point.weights == ()
    d = json.loads(f.to_json())
    assert d["base_point"] == {"weights": [], "values": [0.1, 0.2], "stderr": [0.03, 0.04],
                               "model_uri": "runs:/r/base_model", "extra": {}}
    assert Front.from_json(f.to_json()) == f and Front.from_dict(f.to_dict()) == f
    f.save(tmp_path / "f.json")
    assert Front.load(tmp_path / "f.json").base_point == BASE
    plain = _front(base=None)
    assert "base_point" not in plain.to_dict()  # a front without one writes the JSON it always did
    assert Front.from_json(plain.to_json()) == plain and Front.from_json(plain.to_json()).base_point is None
    # A writer may leave the base point's (empty) weights out.
    d["base_point"].pop("weights")
    assert Front.from_dict(d).base_point == BASE


def test_old_json_without_the_field_loads() -> None:
    old = ('{"schema": "pareto.front/1", "method": "panacea", "objectives": ["helpful", "concise"], '
           '"points": [{"weights": [1.0, 0.0], "values": [0.5, 0.1], "stderr": [0.01, 0.02], "model_uri": "", '
           '"extra": {}}], "reference_point": [0.0, 0.0], "scorer": "oracle", "metrics": {"hypervolume": 0.05}, '
           '"meta": {}}')
    f = Front.from_json(old)
    assert f.base_point is None and f.points[0].values == (0.5, 0.1) and f.metrics == {"hypervolume": 0.05}
    assert "base" not in f.table().splitlines()[3]


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda d: d["base_point"].update(values=[0.1]), r"Front.base_point.stderr: has 2 entries but values has 1"),
    (lambda d: d["base_point"].update(values=[0.1], stderr=[0.1], weights=[]),
     r"Front.base_point.values: has 1 entries, expected 2"),
    (lambda d: d["base_point"].update(stderr=[0.1, -0.1]), r"Front.base_point.stderr\[1\]: must be >= 0"),
    (lambda d: d["base_point"].update(values=[float("nan"), 0.0]), r"Front.base_point.values\[0\]: must be finite"),
    (lambda d: d["base_point"].update(weights=[0.5, 0.5]), r"Front.base_point.weights: the base model has no"),
    (lambda d: d["base_point"].pop("values"), r"Front.base_point: missing field 'values'"),
    (lambda d: d["base_point"].update(bogus=1), r"Front.base_point: unknown field 'bogus'"),
    (lambda d: d.update(base_point=[0.1, 0.2]), r"Front.base_point: expected a dict, got list"),
    (lambda d: d["points"][0].update(weights=[]), r"Front.points\[0\].weights: empty; only Front.base_point"),
])
def test_base_point_validation_names_the_field(mutate, needle: str) -> None:
    d = json.loads(_front().to_json())
    mutate(d)
    with pytest.raises(ValueError, match=needle) as err:
        Front.from_dict(d)
    assert "\n" not in str(err.value)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="Front.base_point: expected FrontPoint or None, got dict"):
        Front("m", ("a", "b"), (), (0.0, 0.0), base_point={"values": [0.1, 0.2]})
    with pytest.raises(ValueError, match="Front.base_point.values: has 3 entries, expected 2"):
        Front("m", ("a", "b"), (), (0.0, 0.0), base_point=FrontPoint.base((0.1, 0.2, 0.3), (0.0,) * 3))
    with pytest.raises(ValueError, match="FrontPoint.stderr: has 1 entries but values has 2"):
        FrontPoint.base((0.1, 0.2), (0.0,))


def test_base_point_is_not_part_of_the_metrics() -> None:
    # This base dominates every point: were it counted, the front would be one point and HV 0.99.
    top = FrontPoint.base((0.99, 0.99), (0.01, 0.01))
    with_base, without = _front(base=top), _front(base=None)
    assert with_base.hypervolume() == without.hypervolume() == pytest.approx(0.8 * 0.2 + 0.3 * 0.5 + 0.3 * 0.2)
    assert with_base.compute_metrics() == without.compute_metrics()
    assert with_base.nondominated_mask().tolist() == [True, True, True, False]
    assert with_base.query((0.5, 0.5)).values == (0.8, 0.2)  # the base model serves no λ
    nd = with_base.nondominated()
    assert len(nd) == 3 and nd.base_point == top  # the filtered front keeps where training started
    row, = serving.compare_table([("run", with_base)])
    assert row["base"] == (0.99, 0.99) and row["hypervolume"] == pytest.approx(without.hypervolume())
    assert serving.compare_table([("run", without)])[0]["base"] is None


def test_gain_over_base_by_hand() -> None:
    g = _front().gain_over_base()
    # (0.8 - 0.1) / hypot(0.04, 0.03) = 0.7 / 0.05 = 14; (0.2 - 0.2) / 0.04 = 0; (0.8 - 0.2) / hypot(0.03, 0.04) = 12
    assert g[0].tolist() == pytest.approx([14.0, 0.0]) and g[2].tolist() == pytest.approx([0.1 / 0.03, 12.0])
    assert g.shape == (4, 2)
    zero = Front("m", ("a", "b"), (FrontPoint((1, 0), (0.5, 0.2), (0, 0)), FrontPoint((0, 1), (0.1, 0.7), (0, 0))),
                 (0, 0), base_point=FrontPoint.base((0.1, 0.7), (0, 0)))
    assert zero.gain_over_base().tolist() == [[np.inf, -np.inf], [0.0, 0.0]]
    with pytest.raises(ValueError, match="Front.base_point: this front has none"):
        _front(base=None).gain_over_base()


def test_paired_standard_errors_by_hand(tmp_path: Path) -> None:
    """Points answered on the same prompts are compared by the standard error of their per-prompt differences:
    a shared prompt effect cancels, so a small consistent gain is many standard errors, not a fraction of one."""
    hard = np.array([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0], [4.0, 0.0]])  # the prompts differ a lot in score
    base_scores = hard + np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0], [0.0, -1.0]])
    own = hard + np.array([[0.1, 1.0], [0.3, -1.0], [0.1, 1.0], [0.3, -1.0]])  # +0.2 on a on average

    def point(w: tuple, scores: np.ndarray, base: bool = False) -> FrontPoint:
        se = scores.std(0, ddof=1) / 2.0
        extra = {"scores": scores.tolist()}
        return (FrontPoint.base(scores.mean(0), se, extra=extra) if base
                else FrontPoint(w, scores.mean(0), se, extra=extra))

    base = point((), base_scores, base=True)
    front = Front("m", ("a", "b"), (point((1.0, 0.0), own), point((0.0, 1.0), base_scores)), (-5.0, -5.0),
                  base_point=base)
    # differences on a: 0.1, 0.3, 0.1, 0.3 -> mean 0.2, std (ddof 1) 0.11547, se 0.057735 -> 3.4641 SE
    gain = front.gain_over_base()
    assert gain[0, 0] == pytest.approx(0.2 / (0.2 / 3**0.5 / 2.0))
    assert gain[0, 1] == 0.0 and gain[1].tolist() == [0.0, 0.0]
    assert front.vertex_separation()[0] == pytest.approx(gain[0, 0])
    # unpaired, the same gain is a fraction of one standard error
    unpaired = Front("m", ("a", "b"), tuple(FrontPoint(p.weights, p.values, p.stderr) for p in front.points),
                     (-5.0, -5.0), base_point=FrontPoint.base(base.values, base.stderr))
    assert 0 < unpaired.gain_over_base()[0, 0] < 0.2
    # the per-prompt scores survive the JSON round trip; a point without them falls back to independent means
    again = Front.from_json(front.to_json())
    assert again.gain_over_base()[0, 0] == pytest.approx(gain[0, 0])
    mixed = Front("m", ("a", "b"), (FrontPoint((1.0, 0.0), own.mean(0), (0.5, 0.5)), front.points[1]), (-5.0, -5.0),
                  base_point=base)
    assert mixed.gain_over_base()[0, 0] == pytest.approx(0.2 / np.hypot(0.5, base.stderr[0]))


def test_table_shows_the_base_first() -> None:
    lines = _front().table().splitlines()
    assert lines[1].split() == ["#", "lambda", "a", "b", "vs", "base", "(SE)", "nd"]
    assert lines[3].split() == ["base", "-", "0.100", "±", "0.030", "0.200", "±", "0.040"]
    assert lines[4].endswith("(+14.0, +0.0)  *") and lines[7].endswith("(+6.3, +2.4)")  # gains, by hand
    assert lines[-1].startswith("hypervolume=") and "non-dominated=3/4" in lines[-1]
    assert len(lines) == 3 + 1 + 4 + 1
    plain = _front(base=None).table().splitlines()
    assert "base" not in plain[1] and len(plain) == 3 + 4 + 1


# ------------------------------------------------------------------------------------------------ plots
def _grid_front(k: int, method: str, base: FrontPoint | None) -> Front:
    pts = tuple(FrontPoint(tuple(w), tuple(np.sqrt(w) + 0.1), (0.02,) * k) for w in preference_grid(k, n_points=6))
    return Front(method, tuple(f"o{i}" for i in range(k)), pts, (0.0,) * k, scorer="reward_model", base_point=base)


def _html_traces(text: str) -> list[dict]:
    """The traces of a plotly HTML file (the JSON array passed to Plotly.newPlot)."""
    start = text.index("Plotly.newPlot(")
    array = text[text.index("[", start):]
    return json.JSONDecoder().raw_decode(array)[0]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_plots_draw_the_base_point_without_an_oracle(tmp_path: Path, k: int) -> None:
    base = FrontPoint.base((0.05,) * k, (0.03,) * k)
    shared = [_grid_front(k, "a", base), _grid_front(k, "b", base)]
    html = _html_traces(plot_front_html(shared, tmp_path / "f.html").read_text(encoding="utf-8"))
    bases = [t for t in html if t.get("name") == "base model"]
    assert len(bases) == 1 and bases[0]["showlegend"] is True  # shared by both fronts: drawn once
    assert not [t for t in html if t.get("name") == "oracle front"]
    if k == 2:
        assert (bases[0]["x"], bases[0]["y"]) == ([0.05], [0.05]) and bases[0]["error_x"]["array"] == [0.03]
    elif k == 3:
        assert bases[0]["type"] == "scatter3d" and bases[0]["error_z"]["array"] == [0.03]
    else:
        assert bases[0]["type"] == "splom" and [d["values"] for d in bases[0]["dimensions"]] == [[0.05]] * 4
    other = _grid_front(k, "c", FrontPoint.base((0.2,) * k, (0.01,) * k))
    html = _html_traces(plot_front_html([*shared, other], tmp_path / "g.html").read_text(encoding="utf-8"))
    assert [t["showlegend"] for t in html if t.get("name") == "base model"] == [True, False]  # "base model" once
    if k < 4:
        png = plot_front_png(shared, tmp_path / "f.png")
        plain = plot_front_png([_grid_front(k, m, None) for m in "ab"], tmp_path / "plain.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.read_bytes() != plain.read_bytes()


def test_png_with_an_oracle_and_a_base_point(tmp_path: Path) -> None:
    png = plot_front_png(_front(), tmp_path / "f.png", oracle_front=np.array([[0.9, 0.3], [0.3, 0.9]]))
    assert png.stat().st_size > 10_000


# ------------------------------------------------------------------------------------------- explorer figures
def test_front_figure_has_a_base_trace() -> None:
    f = _front(scorer="reward_model")
    spec = ex.front_figure(f, "2-D scatter", highlight=0, answer=[0.4, 0.4], answer_name=ex.ANSWER_RM).to_dict()
    names = [d["name"] for d in spec["data"]]
    assert names == ["m non-dominated", "m dominated", ex.BASE, ex.SERVED, ex.ANSWER_RM]
    base = spec["data"][2]
    assert (base["x"], base["y"]) == ([0.1], [0.2])
    assert base["error_x"]["array"] == [0.03] and base["error_y"]["array"] == [0.04]
    assert "base model (untrained)" in base["hovertext"][0] and "reward model scores" in spec["layout"]["title"]["text"]
    assert ex.BASE not in [d["name"] for d in ex.front_figure(_front(base=None), "2-D scatter").to_dict()["data"]]


def test_front_figure_3d_and_parallel_coordinates_with_base() -> None:
    k3 = _grid_front(3, "p", FrontPoint.base((0.1, 0.2, 0.3), (0.01, 0.02, 0.03)))
    base = [d for d in ex.front_figure(k3, "3-D scatter").to_dict()["data"] if d["name"] == ex.BASE]
    assert len(base) == 1 and base[0]["type"] == "scatter3d" and base[0]["z"] == [0.3]
    par = ex.front_figure(k3, "parallel coordinates", highlight=0).to_dict()["data"][0]
    n = len(k3)
    assert par["line"]["color"][-1] == 3.0 and par["line"]["color"][0] == 2.0 and len(par["line"]["color"]) == n + 1
    assert [d["values"][-1] for d in par["dimensions"]] == [ex.BASE_LAMBDA] * 3 + [0.1, 0.2, 0.3]
    assert par["dimensions"][0]["ticktext"][0] == ex.BASE
    plain = ex.front_figure(_grid_front(3, "p", None), "parallel coordinates").to_dict()["data"][0]
    assert len(plain["line"]["color"]) == n and plain["line"]["cmax"] == 2


def test_overlay_draws_shared_base_points_once() -> None:
    a, b = _front(method="a"), _front(method="b")
    c = _front(method="c", base=FrontPoint.base((0.3, 0.1), (0.01, 0.01)))
    data = ex.overlay_figure([("r1", a), ("r1", b)]).to_dict()["data"]
    bases = [d for d in data if d["name"] == ex.BASE]
    assert len(bases) == 1 and "r1 · a, r1 · b" in bases[0]["hovertext"][0]
    data = ex.overlay_figure([("r1", a), ("r2", c), ("r3", _front(method="d", base=None))]).to_dict()["data"]
    assert [d["showlegend"] for d in data if d["name"] == ex.BASE] == [True, False]


def test_points_table_lists_the_base_first() -> None:
    rows = ex.points_table(_front(), highlight=1)
    assert rows[0] == {"point": "base", "λ": "— (untrained)", "a": "0.100 ± 0.030", "b": "0.200 ± 0.040",
                       "a vs base (SE)": "", "b vs base (SE)": "", "non-dominated": ""}
    assert rows[1]["a vs base (SE)"] == "+14.0" and rows[2]["point"] == "1 (serves λ)" and len(rows) == 5
    assert [r["point"] for r in ex.points_table(_front(base=None))] == ["0", "1", "2", "3"]
    assert ex.base_gain_text(_front(), 0) == "vs the base model: a +0.700 (+14.0 SE) · b +0.000 (+0.0 SE)"


# ------------------------------------------------------------------------- a reward-model-only run, no oracle
OBJ = ("helpful", "harmless")
RM_BASE = FrontPoint.base((-0.15, 0.05), (0.04, 0.05))


@pytest.fixture(scope="module")
def rm_only(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real MLflow store with one pipeline run on real data: fronts scored by the reward model only, each with
    the base model's point, no oracle front, no models. Its task keeps the default name (`tiny-hh`), as a
    `task.dataset` recipe that names no task does: the page must not take the synthetic task's oracle for it."""
    root = tmp_path_factory.mktemp("base-point-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("real-data", artifact_location=(root / "artifacts").as_uri())
    tags = {tracking.PIPELINE_TAG: "pipeline", "pareto.task": "tiny-hh", "pareto.objectives": ",".join(OBJ)}
    rid = client.create_run(exp, start_time=1_000_000, tags=tags, run_name="hh-rlhf-smollm2").info.run_id
    values = [((1.0, 0.0), (0.9, -0.4)), ((0.5, 0.5), (0.5, 0.4)), ((0.0, 1.0), (-0.3, 0.8))]
    fronts = {}
    for method, conditioned in (("panacea", True), ("per_weight_dpo", False)):
        pts = tuple(FrontPoint(w, v, (0.05, 0.05), model_uri=f"runs:/{rid}/adapter-{method}-{i}")
                    for i, (w, v) in enumerate(values))
        front = Front(method, OBJ, pts, (-3.0, -3.0), scorer="reward_model", base_point=RM_BASE,
                      meta={"conditioned": conditioned, "models_trained": 1 if conditioned else 3,
                            "train_seconds": 10.0})
        front.compute_metrics()
        client.log_text(rid, front.to_json(), f"fronts/{method}.json")
        fronts[method] = front
    client.set_terminated(rid)
    return {"uri": uri, "run_id": rid, "fronts": fronts}


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


class FakeReward:
    names = OBJ

    def __call__(self, prompts, responses) -> np.ndarray:
        return np.array([[0.25, -0.5]])


def test_explore_page_on_a_reward_model_only_front(monkeypatch: pytest.MonkeyPatch, rm_only: dict) -> None:
    from streamlit.testing.v1 import AppTest

    from pareto.models.scorer import SourcedReward

    # The models are not in this store: answer with a fixed text and score with a fake reward model, so the real
    # `ServedRun.score` decides which scores an answer gets.
    monkeypatch.setattr(serving.ServedRun, "respond", lambda self, choice, prompt, max_new_tokens=48: "be kind")
    monkeypatch.setattr(serving.ServedRun, "_download", lambda self, run_id, path: Path("/nonexistent"))
    monkeypatch.setattr(SourcedReward, "load", classmethod(lambda cls, path, device="cpu": FakeReward()))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", rm_only["uri"])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    spec = chart(at)
    base = trace(spec, ex.BASE)
    assert (base["x"], base["y"]) == ([-0.15], [0.05]) and base["error_y"]["array"] == [0.05]
    assert ex.ORACLE not in [d.get("name") for d in spec["data"]]
    assert [m.label for m in at.metric] == ["hypervolume", "inner product", "non-dominated"]  # no IGD to oracle
    assert any("no oracle" in c.value for c in at.caption)
    assert any(m.value.startswith("**In black, the base model**") and "-0.150 ± 0.040" in m.value for m in at.markdown)
    table = at.table[0].value
    assert list(table.index)[0] == "base" and table.loc["base", "helpful"] == "-0.150 ± 0.040"
    assert len(table) == 4
    # The synthetic task's example prompts (which its oracle scores) are not offered for real data.
    assert "example" not in [s.key for s in at.selectbox] and at.text_input(key="prompt").value == ""
    at.text_input(key="prompt").set_value("how do I apologise to a friend?").run()
    at.button(key="ask").click().run()
    assert not at.exception, at.exception
    assert at.session_state["answer"]["scores"] == {"reward_model": {"helpful": 0.25, "harmless": -0.5}}
    scores = at.dataframe[0].value
    assert list(scores.index) == ["reward model (z-score)"]  # the reward model's scores only
    mark = trace(chart(at), ex.ANSWER_RM)
    assert (mark["x"], mark["y"]) == ([0.25], [-0.5])
    at.radio(key="view_2").set_value("parallel coordinates").run()
    par = chart(at)["data"][0]
    assert par["type"] == "parcoords" and par["line"]["color"][-1] == 3.0
    at.radio(key="page").set_value("Compare").run()
    assert not at.exception, at.exception
    bases = [d for d in chart(at, 0)["data"] if d.get("name") == ex.BASE]
    assert len(bases) == 1  # both methods share the run's base point
    compare = at.dataframe[0].value
    assert list(compare["base"]) == ["(-0.150, 0.050)"] * 2


# ------------------------------------------------------------------------------------------------ the CLI
def test_cli_front_and_compare_show_the_base_point(rm_only: dict, tmp_path: Path) -> None:
    from pareto.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["front", rm_only["run_id"], "--json", "--tracking-uri", rm_only["uri"]])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [f["base_point"] for f in data["fronts"]] == [RM_BASE.to_dict()] * 2
    res = runner.invoke(app, ["front", rm_only["run_id"], "--tracking-uri", rm_only["uri"]])
    assert res.exit_code == 0, res.output
    assert re.search(r"^\s*base\s+-\s+-0\.150 ± 0\.040\s+0\.050 ± 0\.050$", res.stdout, re.M), res.stdout
    plot = tmp_path / "cmp.png"
    res = runner.invoke(app, ["compare", rm_only["run_id"], "--tracking-uri", rm_only["uri"], "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    header, *rest = res.stdout.splitlines()
    cols = header.split()
    assert cols[cols.index("hypervolume") + 1] == "base"
    rows = [line.split() for line in rest if rm_only["run_id"][:8] in line]
    assert len(rows) == 2 and all(r[6] == "(-0.15,0.05)" for r in rows)  # run label is two words
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = [t.get("name") for t in _html_traces(plot.with_suffix(".html").read_text(encoding="utf-8"))]
    assert names.count("base model") == 1 and "oracle front" not in names
