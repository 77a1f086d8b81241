"""The Streamlit front explorer: the simplex slider logic by hand, and the page itself through
`streamlit.testing.v1.AppTest` against real MLflow stores — one filled by a small real pipeline run (models
and all), one written here with a hand-made 3-objective front, and an empty one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from hypothesis import given
from hypothesis import strategies as hs
from mlflow.tracking import MlflowClient
from streamlit.testing.v1 import AppTest

from pareto import serving, tracking
from pareto.front.types import Front, FrontPoint
from pareto.ui import explorer as ex
from tests.conftest import ROOT, _exe, session_lock, session_temp, shared_stage_caches

APP = str(ROOT / "pareto" / "ui" / "app.py")
SMALL = ROOT / "tests" / "configs" / "small.yaml"
TIMEOUT = 240  # seconds per AppTest run: the first one imports torch/peft and may load models on 2 busy cores


# ------------------------------------------------------------------------------------------------ fixtures
def small_store(factory: pytest.TempPathFactory) -> dict:
    """A tracking store filled by one real, fresh run of tests/configs/small.yaml (`pareto run` with a local Ray and
    no cached stages, ~1-3 min).

    Kept under the session's base temp with a marker, so every module (on any xdist worker) shares one run: the UI
    tests read it, and test_pipeline and test_resume compare their runs of the same config with its front.
    """
    root = session_temp(factory) / "ui-small-store"
    marker = root / "run.json"
    with session_lock(factory, "ui-small-store"):
        if not marker.is_file():
            root.mkdir(exist_ok=True)
            uri = f"sqlite:///{root / 'mlflow.db'}"
            env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
            with shared_stage_caches(root / "state", factory, take=False):  # built here; shared with later runs
                proc = subprocess.run([_exe("pareto"), "run", str(SMALL), "--set", f"state_dir={root / 'state'}",
                                       "--set", f"tracking.uri={uri}"], capture_output=True, text=True,
                                      timeout=1200, env=env, cwd=ROOT)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            run = tracking.find_run("latest", uri)
            marker.write_text(json.dumps({"uri": uri, "run_id": run.info.run_id}))
    return json.loads(marker.read_text())


def small_store_fronts(info: dict) -> dict[str, Front]:
    """The small store's logged fronts, by method."""
    return {f.method: f for f in tracking.load_fronts(tracking.find_run(info["run_id"], info["uri"]), info["uri"])}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    info = small_store(tmp_path_factory)
    info["fronts"] = small_store_fronts(info)
    return info


K3 = ("helpful", "harmless", "concise")
K3_POINTS = {  # λ -> values; (0.5, 0.5, 0) is dominated by (0.5, 0, 0.5)
    (1.0, 0.0, 0.0): (0.9, 0.2, 0.3), (0.5, 0.5, 0.0): (0.5, 0.4, 0.5), (0.5, 0.0, 0.5): (0.6, 0.5, 0.6),
    (0.0, 1.0, 0.0): (0.1, 0.95, 0.4), (0.0, 0.5, 0.5): (0.2, 0.8, 0.7), (0.0, 0.0, 1.0): (0.05, 0.6, 0.9),
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real MLflow store with a 3-objective pipeline run whose front and oracle front are logged but whose
    models are not (so asking hits a missing artifact), and a later pipeline run that never logged a front."""
    root = tmp_path_factory.mktemp("ui-synthetic")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ui-synthetic", artifact_location=(root / "artifacts").as_uri())
    tags = {tracking.PIPELINE_TAG: "pipeline", "pareto.task": "tiny-hh", "pareto.objectives": ",".join(K3)}
    run = client.create_run(exp, start_time=1_000_000, tags=tags, run_name="synthetic-k3")
    rid = run.info.run_id
    points = tuple(FrontPoint(w, v, (0.01,) * 3, model_uri=f"runs:/{rid}/adapter") for w, v in K3_POINTS.items())
    oracle = np.array([[1.0, 0.2, 0.3], [0.7, 0.6, 0.7], [0.1, 1.0, 0.5], [0.1, 0.7, 1.0]])
    front = Front("panacea", K3, points, (0.0, 0.0, 0.0),
                  meta={"conditioned": True, "models_trained": 1, "train_seconds": 12.0})
    front.compute_metrics(oracle_front=oracle)
    client.log_text(rid, front.to_json(), "fronts/panacea.json")
    client.log_dict(rid, {"weights": [[1, 0, 0]] * 4, "values": oracle.tolist()}, "oracle/front.json")
    client.set_terminated(rid)
    sweep = client.create_run(exp, start_time=1_500_000, tags={**tags, tracking.PIPELINE_TAG: "sweep"},
                              run_name="sweep-k3")
    sid = sweep.info.run_id
    sweep_points = tuple(FrontPoint(w, v, (0.01,) * 3, model_uri=f"runs:/{sid}-trial{i}/adapter")
                         for i, (w, v) in enumerate(K3_POINTS.items()))
    sweep_front = Front("per_weight_dpo", K3, sweep_points, (0.0, 0.0, 0.0),
                        meta={"conditioned": False, "models_trained": 6, "train_seconds": 60.0})
    client.log_text(sid, sweep_front.to_json(), "fronts/per_weight_dpo.json")
    client.set_terminated(sid)
    crashed = client.create_run(exp, start_time=2_000_000, tags={tracking.PIPELINE_TAG: "pipeline"},
                                run_name="crashed")
    client.set_terminated(crashed.info.run_id, status="FAILED")
    return {"uri": uri, "run_id": rid, "crashed": crashed.info.run_id, "front": front, "sweep": sid,
            "sweep_front": sweep_front}


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    # Streamlit caches are process-global: every test starts from cold caches.
    st.cache_data.clear()
    st.cache_resource.clear()


def app(monkeypatch: pytest.MonkeyPatch, uri: str) -> AppTest:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def chart(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def trace(spec: dict, name: str) -> dict:
    found = [d for d in spec["data"] if d.get("name") == name]
    assert len(found) == 1, [d.get("name") for d in spec["data"]]
    return found[0]


def shown_weights(at: AppTest) -> str:
    lines = [m.value for m in at.markdown if m.value.startswith("λ = ")]
    assert len(lines) == 1
    return lines[0]


# ------------------------------------------------------------------------------------------- pure logic
def test_renormalise_by_hand() -> None:
    # The others keep their ratio 3:5 and fill what is left.
    assert ex.renormalise((0.2, 0.3, 0.5), 0, 0.6) == (0.6, 0.15, 0.25)
    # All others zero: they share what is left equally.
    assert ex.renormalise((1.0, 0.0, 0.0), 0, 0.4) == (0.4, 0.3, 0.3)
    # 50 units at 34:33 = 25.37 : 24.63 -> floors 25, 24; the larger remainder takes the last unit.
    assert ex.renormalise((0.34, 0.33, 0.33), 2, 0.5) == (0.25, 0.25, 0.5)
    # 50 units at 3:1 = 37.5 : 12.5 -> a tie in remainders goes to the earlier objective.
    assert ex.renormalise((0.6, 0.2, 0.2), 1, 0.5) == (0.38, 0.5, 0.12)
    assert ex.renormalise((0.5, 0.5), 1, 1.0) == (0.0, 1.0)
    assert ex.renormalise((1.0,), 0, 0.3) == (1.0,)
    assert ex.equal_weights(3) == (0.34, 0.33, 0.33) and ex.equal_weights(4) == (0.25,) * 4


def test_renormalise_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="value"):
        ex.renormalise((0.5, 0.5), 0, 1.5)
    with pytest.raises(ValueError, match="index"):
        ex.renormalise((0.5, 0.5), 2, 0.5)
    with pytest.raises(ValueError, match="step"):
        ex.renormalise((0.5, 0.5), 0, 0.5, step=0.3)


@given(hs.lists(hs.integers(0, 100), min_size=2, max_size=6), hs.data())
def test_renormalise_stays_on_the_simplex(raw: list[int], data: hs.DataObject) -> None:
    units = [int(u) for u in np.floor(np.array(raw) / max(sum(raw), 1) * 100)]
    units[0] += 100 - sum(units)
    weights = [u / 100 for u in units]
    i = data.draw(hs.integers(0, len(weights) - 1))
    value = data.draw(hs.integers(0, 100)) / 100
    out = ex.renormalise(weights, i, value)
    assert ex.on_grid(out) and out[i] == value
    rest = [j for j in range(len(weights)) if j != i]
    old = sum(weights[j] for j in rest)
    for j in rest:  # each other weight is within one grid step of its proportional share
        share = (1 - value) * (weights[j] / old if old > 0 else 1 / len(rest))
        assert abs(out[j] - share) < 0.01 + 1e-9
    for a in rest:  # order among the others is kept
        for b in rest:
            if weights[a] > weights[b]:
                assert out[a] >= out[b]


def test_served_index_and_compare_table_by_hand() -> None:
    pts = tuple(FrontPoint(w, v, (0.0, 0.0), model_uri=f"m{i}") for i, (w, v) in enumerate(
        [((1.0, 0.0), (0.8, 0.2)), ((0.5, 0.5), (0.5, 0.5)), ((0.0, 1.0), (0.2, 0.8))]))
    front = Front("m", ("a", "b"), pts, (0.0, 0.0), meta={"models_trained": 3, "train_seconds": 30.0})
    assert ex.served_index(front, (0.7, 0.3)) == 1  # nearest evaluated λ (L1 0.6 vs 0.6: earliest wins)
    assert ex.served_index(front, (0.8, 0.2)) == 0
    assert ex.served_index(front, (0.5, 0.5), point=pts[2]) == 2  # a per-weight choice wins over nearness
    row, = serving.compare_table([("run", front)])
    # Staircase by hand: 0.2*0.8 + 0.3*0.5 + 0.3*0.2 = 0.37.
    assert row == {"run": "run", "method": "m", "models trained": 3, "training CPU-s": 30.0,
                   "hypervolume": pytest.approx(0.37), "base": None, "IGD": None, "inner product": None}


# --------------------------------------------------------------------------------------- empty and broken
def test_empty_store_shows_guidance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = app(monkeypatch, f"sqlite:///{tmp_path / 'empty.db'}")
    assert len(at.info) == 1 and "pareto quickstart" in at.info[0].value
    assert str(tmp_path / "empty.db") in at.info[0].value
    assert not at.get("plotly_chart") and not at.slider


def test_unreadable_store_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_text("this is not sqlite")
    at = app(monkeypatch, f"sqlite:///{bad}")
    assert len(at.error) == 1 and "Cannot read the MLflow tracking store" in at.error[0].value


def test_run_without_front_says_so(monkeypatch: pytest.MonkeyPatch, synthetic: dict) -> None:
    at = app(monkeypatch, synthetic["uri"])
    assert at.selectbox(key="run").value == synthetic["crashed"]  # newest first
    assert len(at.warning) == 1 and "has no front" in at.warning[0].value and "fronts/*.json" in at.warning[0].value
    assert not at.get("plotly_chart")


def test_missing_model_artifact_says_so(monkeypatch: pytest.MonkeyPatch, synthetic: dict) -> None:
    from pareto.data import load_task

    at = app(monkeypatch, synthetic["uri"])
    at.selectbox(key="run").select(synthetic["run_id"]).run()
    held_out = [p.text for p in load_task("tiny-hh", seed=0).prompts("eval")]
    assert at.text_input(key="prompt").value == held_out[0]
    at.selectbox(key="example").select(held_out[2]).run()  # picking an example fills the prompt
    assert at.text_input(key="prompt").value == held_out[2]
    at.button(key="ask").click().run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "artifact" in at.error[0].value and "missing" in at.error[0].value
    assert "answer" not in at.session_state


def test_the_ui_imports_no_training_code(synthetic: dict) -> None:
    # A fresh interpreter: the page, a run chosen and a question asked must not pull in methods or distributed.
    code = (f"import os, sys\nos.environ['MLFLOW_TRACKING_URI'] = {synthetic['uri']!r}\n"
            "from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({APP!r}, default_timeout={TIMEOUT})\nat.run()\n"
            f"at.selectbox(key='run').select({synthetic['run_id']!r}).run()\n"
            "at.button(key='ask').click().run()\nassert not at.exception and at.get('plotly_chart')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('pareto.methods', 'pareto.distributed'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------- sliders (3 objectives)
def test_three_sliders_stay_on_the_simplex(monkeypatch: pytest.MonkeyPatch, synthetic: dict) -> None:
    at = app(monkeypatch, synthetic["uri"])
    at.selectbox(key="run").select(synthetic["run_id"]).run()
    steps = [  # (objective moved, to, every weight after it, by hand)
        ("helpful", 0.6, (0.6, 0.2, 0.2)), ("harmless", 0.5, (0.38, 0.5, 0.12)), ("concise", 1.0, (0.0, 0.0, 1.0)),
        ("helpful", 0.3, (0.3, 0.0, 0.7)), ("harmless", 0.35, (0.2, 0.35, 0.45)),
    ]
    assert tuple(s.value for s in at.slider) == (0.34, 0.33, 0.33)
    for name, value, expected in steps:
        at.slider(key=f"w_{name}").set_value(value).run()
        assert not at.exception, at.exception
        got = tuple(s.value for s in at.slider)
        assert got == pytest.approx(expected, abs=1e-12)
        text = shown_weights(at)
        shown = [float(x) for x in text.split("**")[1::2]]  # the bold numbers
        assert round(sum(shown) * 100) == 100 and text.endswith("(Σ = 1.00)")
    spec = chart(at)
    assert spec["data"][0]["type"] == "scatter3d"
    served = trace(spec, ex.SERVED)  # λ (0.2, 0.35, 0.45) is nearest (L1 0.3) to the grid point (0, 0.5, 0.5)
    assert (served["x"][0], served["y"][0], served["z"][0]) == K3_POINTS[(0.0, 0.5, 0.5)]
    assert "λ = (0.00, 0.50, 0.50)" in served["hovertext"][0]
    oracle = trace(spec, ex.ORACLE)
    assert len(oracle["x"]) == 4
    dominated = trace(spec, "panacea dominated")
    assert dominated["opacity"] < 1 and (dominated["x"], dominated["y"]) == ([0.5], [0.4])
    assert trace(spec, "panacea non-dominated")["opacity"] == 1
    # A visit to the Compare page keeps the run and λ of the Explore page.
    at.radio(key="page").set_value("Compare").run()
    assert not at.exception and [w.value for w in at.warning if "has no front" in w.value]  # the crashed run
    at.radio(key="page").set_value("Explore").run()
    assert at.selectbox(key="run").value == synthetic["run_id"]
    assert tuple(s.value for s in at.slider) == pytest.approx((0.2, 0.35, 0.45), abs=1e-12)


def test_a_sweep_is_explored_like_a_run(monkeypatch: pytest.MonkeyPatch, synthetic: dict) -> None:
    at = app(monkeypatch, synthetic["uri"])
    run = at.selectbox(key="run")
    crashed, sweep, pipeline = run.options  # newest first; a sweep says so, an unfinished run too
    assert crashed.startswith("crashed · ") and crashed.endswith(f"{synthetic['crashed'][:8]} (failed)")
    assert sweep.startswith("sweep · sweep-k3 · ") and sweep.endswith(synthetic["sweep"][:8])
    assert pipeline.startswith("synthetic-k3 · ") and pipeline.endswith(synthetic["run_id"][:8])
    run.select(synthetic["sweep"]).run()
    at.slider(key="w_concise").set_value(1.0).run()
    # A per-weight sweep serves λ with its front's query point: here the concise vertex's model.
    point = synthetic["sweep_front"].query((0.0, 0.0, 1.0))
    assert point.weights == (0.0, 0.0, 1.0)
    served = trace(chart(at), ex.SERVED)
    assert (served["x"][0], served["y"][0], served["z"][0]) == point.values
    assert any(f"`{point.model_uri}`" in m.value for m in at.markdown)


def test_parallel_coordinates_marks_the_served_point(monkeypatch: pytest.MonkeyPatch, synthetic: dict) -> None:
    at = app(monkeypatch, synthetic["uri"])
    at.selectbox(key="run").select(synthetic["run_id"]).run()
    at.slider(key="w_helpful").set_value(1.0).run()
    at.radio(key="view_3").set_value("parallel coordinates").run()
    data = chart(at)["data"][0]
    assert data["type"] == "parcoords"
    # colour: 0 dominated, 1 non-dominated, 2 the point serving λ = (1, 0, 0) (listed first)
    assert data["line"]["color"] == [2.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert [d["label"] for d in data["dimensions"]][-3:] == list(K3)


# --------------------------------------------------------------------------------- a real run (2 objectives)
@pytest.mark.slow
def test_slider_moves_lambda_and_the_highlighted_point(monkeypatch: pytest.MonkeyPatch, small: dict) -> None:
    at = app(monkeypatch, small["uri"])
    for method in ("panacea", "per_weight_dpo"):
        at.selectbox(key="method").select(method).run()
        front = small["fronts"][method]
        for helpful in (1.0, 0.0, 0.7):
            at.slider(key="w_helpful").set_value(helpful).run()
            assert not at.exception, at.exception
            lam = (helpful, round(1 - helpful, 2))
            assert at.slider(key="w_concise").value == pytest.approx(lam[1])
            assert shown_weights(at) == f"λ = helpful **{lam[0]:.2f}** · concise **{lam[1]:.2f}**  (Σ = 1.00)"
            # Expected, computed here: per-weight serves with the front's query point; Panacea is set to λ and
            # the chart marks its evaluated λ nearest to it.
            if method == "per_weight_dpo":
                point = front.query(lam)
            else:
                point = min(front.points, key=lambda p: abs(p.weights[0] - lam[0]))
            served = trace(chart(at), ex.SERVED)
            assert (served["x"][0], served["y"][0]) == point.values
            assert f"λ = ({point.weights[0]:.2f}, {point.weights[1]:.2f})" in served["hovertext"][0]
            assert any(f"`{point.model_uri}`" in m.value for m in at.markdown)


def _expected_answer(uri: str, run_id: str, choice_uri: str, conditioned: bool, weights, prompt: str,
                     tmp: Path, objectives) -> str:
    """What the model behind `choice_uri` answers, loaded here straight from its MLflow artifacts."""
    from pareto.models.conditioned import PanaceaPolicy, PerWeightPolicy

    client = MlflowClient(uri)
    base = Path(client.download_artifacts(run_id, "base_model", str(tmp / "base")))
    adapter_run, _, path = choice_uri.removeprefix("runs:/").partition("/")
    adapter = Path(client.download_artifacts(adapter_run, path, str(tmp / "adapter")))
    if conditioned:
        policy = PanaceaPolicy.load(base, adapter, objectives)
    else:
        sub = next(p.parent for p in adapter.rglob("adapter_config.json"))
        policy = PerWeightPolicy.load(base, {"w": (weights, sub)}, objectives)
    return policy.generate([prompt], np.asarray(weights), max_new_tokens=48)[0]


@pytest.mark.slow
def test_asking_answers_from_the_expected_model(monkeypatch: pytest.MonkeyPatch, small: dict, tmp_path: Path) -> None:
    from pareto.data import load_task

    at = app(monkeypatch, small["uri"])
    at.selectbox(key="method").select("per_weight_dpo").run()
    at.slider(key="w_helpful").set_value(0.8).run()
    prompt = at.text_input(key="prompt").value
    assert prompt  # the first held-out prompt of the task is filled in
    at.button(key="ask").click().run()
    assert not at.exception, at.exception
    front = small["fronts"]["per_weight_dpo"]
    expected_point = front.query((0.8, 0.2))
    answer = at.session_state["answer"]
    assert answer["model_uri"] == expected_point.model_uri
    expected = _expected_answer(small["uri"], small["run_id"], expected_point.model_uri, False,
                                expected_point.weights, prompt, tmp_path, front.objectives)
    assert answer["text"] == expected
    assert any(f"answered by `{expected_point.model_uri}`" in m.value for m in at.markdown)
    # The scores table: reward model z-scores and the oracle, whose values we recompute from the task.
    table = at.dataframe[0].value
    assert list(table.index) == ["reward model (z-score)", "oracle"] and list(table.columns) == ["helpful", "concise"]
    task = load_task("tiny-hh", seed=0)
    oracle = task.oracle_scores([prompt], [answer["text"]])[0].numpy()
    assert table.loc["oracle"].tolist() == pytest.approx([oracle[0], oracle[2]])
    # ...and the answer is on the chart, at its oracle scores.
    mark = trace(chart(at), ex.ANSWER)
    assert (mark["x"][0], mark["y"][0]) == pytest.approx((oracle[0], oracle[2]))


@pytest.mark.slow
def test_panacea_answers_at_lambda_without_reloading(monkeypatch: pytest.MonkeyPatch, small: dict,
                                                     tmp_path: Path) -> None:
    from pareto.models.conditioned import PanaceaPolicy

    loads = []
    original = PanaceaPolicy.load.__func__

    def counting_load(cls, *args, **kwargs):  # a spy: counts, then loads for real
        loads.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PanaceaPolicy, "load", classmethod(counting_load))
    at = app(monkeypatch, small["uri"])
    at.selectbox(key="method").select("panacea").run()
    prompt = at.text_input(key="prompt").value
    model_uri = small["fronts"]["panacea"].points[0].model_uri
    answers = {}
    for helpful in (1.0, 0.0):
        at.slider(key="w_helpful").set_value(helpful).run()
        at.button(key="ask").click().run()
        assert not at.exception, at.exception
        answers[helpful] = at.session_state["answer"]
        assert answers[helpful]["model_uri"] == model_uri and answers[helpful]["weights"] == (helpful, 1 - helpful)
    assert len(loads) == 1  # one load for both λ: switching λ writes singular values in place
    expected = _expected_answer(small["uri"], small["run_id"], model_uri, True, (0.0, 1.0), prompt, tmp_path,
                                small["fronts"]["panacea"].objectives)
    assert answers[0.0]["text"] == expected


@pytest.mark.slow
def test_compare_page_table_and_overlay(monkeypatch: pytest.MonkeyPatch, small: dict) -> None:
    at = app(monkeypatch, small["uri"])
    at.radio(key="page").set_value("Compare").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    fronts = small["fronts"]
    assert list(table["method"]) == list(fronts)
    for _, row in table.iterrows():
        front = fronts[row["method"]]
        assert row["models trained"] == front.meta["models_trained"]
        assert row["training CPU-s"] == pytest.approx(front.meta["train_seconds"])
        assert row["hypervolume"] == pytest.approx(front.hypervolume())
        assert row["IGD"] == pytest.approx(front.metrics["igd"])
        assert row["inner product"] == pytest.approx(front.metrics["inner_product"])
    assert list(table["models trained"]) == [1, 3]  # panacea: one model; per-weight: one per λ of the 3-point grid
    label = f"test-small-seed0·{small['run_id'][:6]}"
    names = [d["name"] for d in chart(at, 0)["data"]]
    assert names[0] == ex.ORACLE
    for method, front in fronts.items():  # each method's non-dominated points, labelled with run, method and HV
        assert f"{label} · {method} HV={front.hypervolume():.3f}" in names
    cost = chart(at, 1)["data"]
    assert [d["name"] for d in cost] == list(fronts)
