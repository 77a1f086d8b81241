"""Sweeps: `pareto sweep` killed mid-run and rerun resumes with no trial lost and none run twice (a real subprocess,
a real Optuna SQLite storage, a real MLflow server); the Pareto trials are the non-dominated filter of all trials;
every trial is a nested MLflow run linked to its trial number; the registry holds the Pareto trials; the pymoo
path replays deterministically; a conditioned method is swept by grid evaluation."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from pareto import query
from pareto.config import ConfigError, config_from_dict
from pareto.distributed import sweep
from pareto.front.metrics import dominates, non_dominated_mask
from tests.conftest import _exe, free_port, wait_http

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)

N_TRIALS = 8
# Seconds-scale trials: a small LM (2 SFT epochs), a reward model on 1 pair per prompt, 40 DPO steps per trial
# (long enough that the test can kill the sweep between trials).
# Scored by the learned reward model, whose z-scores separate the trials' models (the oracle barely does here).
CONFIG = {
    "name": "sweep-test", "seed": 0, "task": {"pairs_per_prompt": 1}, "objectives": ["helpful", "concise"],
    "model": {"tiny": {"hidden_size": 64, "intermediate_size": 128, "num_heads": 1, "vocab_size": 512,
                       "sft_epochs": 2}},
    "reward_model": {"epochs": 20, "min_accuracy": 0.6},
    "methods": {"per_weight_dpo": {"max_steps": 40, "eval_every": 20, "val_prompts": 6, "lr": 2.0e-3},
                "panacea": {"max_steps": 10, "eval_every": 10, "val_prompts": 6, "lr": 3.0e-3}},
    "evaluation": {"grid_points": 3, "n_prompts": 12, "max_new_tokens": 32, "reference_point": [-0.1, -0.1],
                   "scorer": "reward_model"},
    "sweep": {"n_trials": N_TRIALS, "concurrency": 2, "population_size": 4,
              "params": {"beta": {"low": 0.1, "high": 1.0, "log": True},
                         "lr": {"low": 5.0e-4, "high": 5.0e-3, "log": True}}},
}


def _trial_states(db: Path) -> list[str]:
    """The trials' states straight from the SQLite file (a cheap query, so polling can be fine-grained)."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return [row[0] for row in conn.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # tables not created yet, or the database is busy: ask again
        return []


def _study(storage: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name="sweep-test", storage=storage)
    except Exception:  # not created yet, or the database is busy: ask again
        return None


@pytest.fixture(scope="module")
def killed(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`pareto sweep` started, SIGKILLed (with its local Ray) once trials have finished and others are running,
    then the same command run again to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(CONFIG))
    state = tmp / "state"
    storage = f"sqlite:///{state / 'optuna.db'}"
    cmd = [_exe("pareto"), "sweep", str(tmp / "sweep.yaml"), "--set", f"state_dir={state}",
           "--set", f"tracking.uri={mlflow_server}"]
    with open(tmp / "first.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 900
            while time.time() < deadline:
                assert proc.poll() is None, "the sweep ended before it was killed:\n" + (tmp / "first.log").read_text(
                    errors="replace")[-3000:]
                states = _trial_states(state / "optuna.db")
                if states.count("COMPLETE") >= 2 and "RUNNING" in states:
                    break
                time.sleep(0.2)  # trials take seconds: a coarse poll can miss the whole window
        finally:
            with contextlib.suppress(ProcessLookupError):  # already ended: the assertion above says why
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started: its process group
            proc.wait()
    before = {t.number: t for t in _study(storage).trials}
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"before": before, "study": _study(storage), "stdout": second.stdout, "uri": mlflow_server,
            "state": state, "storage": storage}


def test_killed_sweep_resumes_with_no_trial_lost_and_none_run_twice(killed: dict) -> None:
    before, study = killed["before"], killed["study"]
    complete = optuna.trial.TrialState.COMPLETE
    done_before = {n for n, t in before.items() if t.state == complete}
    interrupted = {n for n, t in before.items() if t.state == optuna.trial.TrialState.RUNNING}
    assert len(done_before) >= 2 and interrupted  # it really was killed mid-sweep
    trials = study.trials
    assert [t.state for t in trials] == [complete] * N_TRIALS  # exactly the configured number, nothing failed
    for n in done_before:  # finished trials were not run again
        assert trials[n].datetime_complete == before[n].datetime_complete and trials[n].values == before[n].values
    for n in interrupted:  # interrupted trials finished under their own number, with the parameters they drew
        assert before[n].params.items() <= trials[n].params.items()  # (a kill inside `ask` left some undrawn)
        assert set(trials[n].params) == set(trials[0].params)
    ran = N_TRIALS - len(done_before)
    assert f"this run ran {ran} trial(s), resumed {len(interrupted)} interrupted, 0 failed" in killed["stdout"]
    assert study.user_attrs["sampler"] == "nsga2"
    # Generation 0 starts with the evaluation grid (vertices included) at the configured hyper-parameters.
    assert [sweep.SearchSpace(("helpful", "concise"), {}, set()).weights(trials[i].params) for i in range(3)] == \
        [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    assert trials[0].params["beta"] == 0.5 and trials[0].params["lr"] == 2.0e-3


def test_pareto_trials_are_the_non_dominated_filter(killed: dict) -> None:
    study = killed["study"]
    values = np.array([t.values for t in study.trials])
    best = sorted(t.number for t in study.best_trials)
    assert best == np.flatnonzero(non_dominated_mask(values)).tolist()
    brute = [i for i in range(len(values)) if not any(dominates(values[j], values[i]) for j in range(len(values)))]
    assert best == brute
    assert 1 <= len(best) < N_TRIALS  # a real trade-off: some trials are dominated
    assert f"Pareto trials (study.best_trials): {best}" in killed["stdout"]


def test_every_trial_is_a_nested_run_linked_to_its_trial_number(killed: dict) -> None:
    study, client = killed["study"], MlflowClient(killed["uri"])
    parent = client.get_run(study.user_attrs["mlflow_run_id"])  # one run for both drives of the study
    assert parent.data.tags["pareto.kind"] == "sweep" and parent.data.tags["optuna.study_name"] == "sweep-test"
    nested = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    # besides one run per trial: the stages that built (or fetched) the base and reward models and scored the base
    # model, once per drive of the study
    children = [r for r in nested if r.data.tags.get("pareto.kind") == "trial"]
    assert {r.data.tags.get("mlflow.runName") for r in nested if r not in children} == \
        {"base_eval", "reward_model", "sft"}
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    assert len(children) == N_TRIALS and sorted(by_number) == list(range(N_TRIALS))
    for t in study.trials:
        run = by_number[t.number]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.params["weights"] == str(t.user_attrs["weights"])
        assert [run.data.metrics[f"reward_model/{o}"] for o in ("helpful", "concise")] == pytest.approx(t.values)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"adapter", "model_meta.json"}
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"fronts", "base_model", "reward_model", "plots", "optuna"} <= arts


def test_registry_holds_the_pareto_trials_and_query_uses_them(killed: dict) -> None:
    study, uri = killed["study"], killed["uri"]
    versions = MlflowClient(uri).search_model_versions("name='pareto-sweep-test'")
    best = {t.number: t for t in study.best_trials}
    assert sorted(int(v.tags["optuna.trial_number"]) for v in versions) == sorted(best)
    for v in versions:
        t = best[int(v.tags["optuna.trial_number"])]
        assert v.tags["method"] == "per_weight_dpo" and v.tags["objectives"] == "helpful,concise"
        assert v.tags["scorer"] == "reward_model" and v.tags["kind"] == "sweep"
        assert [float(v.tags["value.helpful"]), float(v.tags["value.concise"])] == t.values
        assert v.tags["weights"] == str(t.user_attrs["weights"])
    # λ = a vertex: the Pareto trial best in that objective (linear scalarization), and its answer.
    top = max(best.values(), key=lambda t: t.values[0])
    out = query.answer("sweep-test", (1.0, 0.0), "how do i learn guitar?", uri, max_new_tokens=16)
    assert out.choice.model.tags["optuna.trial_number"] == str(top.number)
    assert out.choice.model.model_uri == f"runs:/{top.user_attrs['mlflow_run_id']}/adapter" and out.text


def test_optuna_dashboard_opens_the_study(killed: dict) -> None:
    port = free_port()
    proc = subprocess.Popen([_exe("optuna-dashboard"), killed["storage"], "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", timeout=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
            studies = json.loads(r.read())["study_summaries"]
        assert [(s["study_name"], s["directions"]) for s in studies] == [("sweep-test", ["maximize", "maximize"])]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- in-process: a local Ray for cheap real tasks and the conditioned sweep ----------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    from pareto.distributed.pipeline import init_ray

    init_ray(config_from_dict(CONFIG, ["resources.num_cpus=2"]))
    yield
    ray.shutdown()


@ray.remote(num_cpus=0.5)
def _toy_trial(weights: list[float], beta: float) -> list[float]:
    """A cheap, exact trial: a concave front scaled by how far β is from 0.3."""
    s = 1.0 - 0.1 * (np.log(beta) - np.log(0.3)) ** 2
    return [float(np.sqrt(weights[0]) * s), float(np.sqrt(weights[1]) * s)]


class _Interrupt(Exception):
    pass


def _toy_driver(space: sweep.SearchSpace, stop_after: int | None, submitted: list[int]):
    def submit(number: int, params: dict):
        if stop_after is not None and len(submitted) == stop_after:
            raise _Interrupt  # the driver dies here: the trial just asked and those in flight stay RUNNING
        submitted.append(number)
        return _toy_trial.remote(space.weights(params), params["beta"])

    def finish(trial, params: dict, out: list[float]) -> list[float]:
        return out

    return submit, finish


@pytest.mark.parametrize("sampler", ["pymoo-nsga2", "pymoo-nsga3"])
def test_pymoo_sweep_resumes_by_deterministic_replay(sampler: str, local_ray, tmp_path: Path) -> None:
    from pareto.config import SearchRange

    space = sweep.SearchSpace(("a", "b"), {"beta": SearchRange(low=0.1, high=1.0, log=True)}, set())
    grid = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])

    def run(name: str, stop_after: int | None, submitted: list[int]) -> optuna.Study:
        study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 's.db'}", load_if_exists=True,
                                    directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(0))
        x0 = sweep.pymoo_initial(space, grid, type("M", (), {"beta": 0.5})(), 4, seed=0)
        algorithm = sweep.pymoo_algorithm(sampler, space, 4, x0)
        submit, finish = _toy_driver(space, stop_after, submitted)
        sweep.drive_pymoo(study, space, submit, finish, n_trials=10, concurrency=2, algorithm=algorithm, seed=0,
                          progress=False)
        return study

    reference = run("straight", None, [])
    with pytest.raises(_Interrupt):
        run("killed", 5, [])
    killed = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path / 's.db'}")
    finished = {t.number for t in killed.trials if t.state.name == "COMPLETE"}
    assert len(finished) == 4 and any(t.state.name == "RUNNING" for t in killed.trials)
    second: list[int] = []
    resumed = run("killed", None, second)
    assert not finished & set(second)  # nothing that had finished ran again
    assert len(resumed.trials) == 10 and all(t.state.name == "COMPLETE" for t in resumed.trials)

    def slots(study: optuna.Study) -> dict:
        return {(t.user_attrs["pymoo_generation"], t.user_attrs["pymoo_index"]): (t.params, t.values)
                for t in study.trials}

    assert slots(resumed) == slots(reference)  # the resumed search is exactly the uninterrupted one
    assert sorted(k for k in slots(reference)) == [(0, i) for i in range(4)] + [(1, i) for i in range(4)] + [
        (2, 0), (2, 1)]  # whole generations of 4, the last one cut to reach exactly n_trials
    gen0 = [space.weights(p) for (g, _), (p, _) in sorted(slots(reference).items()) if g == 0]
    assert gen0[:3] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]  # the reference directions come first
    values = np.array([t.values for t in reference.trials])
    assert sorted(t.number for t in reference.best_trials) == np.flatnonzero(non_dominated_mask(values)).tolist()


def test_optuna_driver_reuses_orphans_by_number(local_ray, tmp_path: Path) -> None:
    from pareto.config import SearchRange

    space = sweep.SearchSpace(("a", "b"), {"beta": SearchRange(low=0.1, high=1.0, log=True)}, set())
    study = optuna.create_study(study_name="o", storage=f"sqlite:///{tmp_path / 'o.db'}", load_if_exists=True,
                                directions=["maximize", "maximize"],
                                sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=0))
    submit, finish = _toy_driver(space, 3, first := [])
    with pytest.raises(_Interrupt):
        sweep.drive_optuna(study, space, submit, finish, n_trials=7, concurrency=2, progress=False)
    running = {t.number for t in study.trials if t.state.name == "RUNNING"}
    assert running  # asked, never told
    submit, finish = _toy_driver(space, None, second := [])
    stats = sweep.drive_optuna(study, space, submit, finish, n_trials=7, concurrency=2, progress=False)
    assert set(stats.resumed) == running and set(stats.resumed) <= set(second)
    assert len(study.trials) == 7 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len(first) + len(second) - len(running & set(first)) == 7  # each trial ran to completion exactly once


def test_a_trial_killed_inside_ask_keeps_what_it_drew_and_draws_the_rest(tmp_path: Path) -> None:
    """A driver killed inside `study.ask` (the trial created, some parameters not yet suggested) leaves a RUNNING
    trial with part of its parameters: resumed, it keeps those and draws the others, so its λ can be read."""
    from pareto.config import SearchRange

    space = sweep.SearchSpace(("a", "b"), {"beta": SearchRange(low=0.1, high=1.0, log=True)}, set())
    study = optuna.create_study(study_name="k", storage=f"sqlite:///{tmp_path / 'k.db'}",
                                directions=["maximize", "maximize"])
    trial_id = study._storage.create_new_trial(study._study_id)  # what `ask` does first
    first = next(iter(space.distributions()))
    optuna.trial.Trial(study, trial_id)._suggest(first, space.distributions()[first])  # ... then killed
    orphan = study.trials[0]
    assert orphan.state.name == "RUNNING" and set(orphan.params) == {first}
    resumed = sweep.resume_orphan(study, orphan, space)
    assert resumed.number == orphan.number and set(resumed.params) == set(space.distributions())
    assert resumed.params[first] == orphan.params[first]
    assert sum(space.weights(resumed.params)) == pytest.approx(1.0)


def test_conditioned_sweep_is_a_grid_evaluation(killed: dict, local_ray, tmp_path: Path) -> None:
    """Panacea is one model for every λ: `sweep` trains it once and evaluates it on the λ grid (no study)."""
    from pareto.models.conditioned import PanaceaPolicy

    data = {**CONFIG, "sweep": {"method": "panacea", "grid_points": 4}}
    cfg = config_from_dict(data, [f"state_dir={killed['state']}", f"tracking.uri={killed['uri']}",
                                  "tracking.experiment=sweep-test-cond"])
    result = sweep.run_sweep(cfg, progress=False)
    front = result.front
    assert result.pipeline is not None and result.n_complete == 4 and front.meta["conditioned"] is True
    np.testing.assert_allclose(front.weights(), [[0.0, 1.0], [1 / 3, 2 / 3], [2 / 3, 1 / 3], [1.0, 0.0]])
    assert len({p.model_uri for p in front.points}) == 1 and front.meta["models_trained"] == 1
    assert [s.study_name for s in optuna.get_all_study_summaries(killed["storage"])] == ["sweep-test"]  # no study
    (registered,) = result.registered
    assert registered.conditioned and registered.lambda_low == (0.0, 0.0) and registered.lambda_high == (1.0, 1.0)
    # Served set to any λ: the answer is the conditioned model's own at that λ.
    out = query.answer("sweep-test-cond", (0.3, 0.7), "how do i learn guitar?", killed["uri"], max_new_tokens=16)
    assert out.choice.model.version == registered.version and out.choice.served_weights == (0.3, 0.7)
    run_id, path = registered.model_uri.removeprefix("runs:/").split("/", 1)
    adapter = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=killed["uri"])
    from pareto.cache import cache_dir

    direct = PanaceaPolicy.load(cache_dir(cfg, "base"), adapter, ("helpful", "concise"))
    assert out.text == direct.generate(["how do i learn guitar?"], np.array([0.3, 0.7]), max_new_tokens=16)[0]

    # `pareto compare`: the sweep's set of per-weight models next to the one conditioned model.
    from typer.testing import CliRunner

    from pareto.cli import app

    sweep_run = killed["study"].user_attrs["mlflow_run_id"]
    plot = tmp_path / "cmp.png"
    res = CliRunner().invoke(app, ["compare", sweep_run, result.run_id, "--tracking-uri", killed["uri"],
                                   "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    # the overlay: a real PNG, and an HTML whose traces name both runs' fronts
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"overlay plot: {plot}" in res.stdout
    html = plot.with_suffix(".html").read_text()
    assert f"({sweep_run[:8]}) · per_weight_dpo" in html and f"({result.run_id[:8]}) · panacea" in html
    rows = {line.split()[2]: line.split() for line in res.stdout.splitlines() if f"({sweep_run[:8]})" in line
            or f"({result.run_id[:8]})" in line}
    assert rows["per_weight_dpo"][3] == str(N_TRIALS) and rows["panacea"][3] == "1"
    assert rows["panacea"][5] == f"{front.metrics['hypervolume']:.4g}"


@pytest.mark.parametrize(("override", "needle"), [
    ("sweep.method=morlhf", "sweep.method: 'morlhf' is not enabled"),
    ("sweep.params.target_modules.choices=[1]", "sweep.params.target_modules: not a numeric field"),
    ("sweep.params.lora_rank.choices=[4.5]", "sweep.params.lora_rank: methods.per_weight_dpo.lora_rank is an integer"),
    ("sweep.params.lr.low=0.1", "sweep.params.lr: low (0.1) must be below high"),
    ("sweep.sampler=cmaes", "sweep.sampler: Input should be 'nsga2'"),
    ("sweep.concurrency=0", "sweep.concurrency"),
])
def test_bad_sweep_config_is_one_line_error(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        config_from_dict(CONFIG, [override])
    assert "\n" not in str(err.value)


def test_search_space_hand_cases() -> None:
    from pareto.config import SearchRange

    space = sweep.SearchSpace(("a", "b", "c"), {"lr": SearchRange(low=1e-4, high=1e-2, log=True),
                                                "rank": SearchRange(choices=[4, 8, 16]),
                                                "steps": SearchRange(low=10, high=20)}, {"steps"})
    assert space.weights({"w_a": 0.2, "w_b": 0.6, "w_c": 0.2}) == pytest.approx([0.2, 0.6, 0.2])
    assert space.weights({"w_a": 1.0, "w_b": 1.0, "w_c": 2.0}) == pytest.approx([0.25, 0.25, 0.5])
    assert space.weights({"w_a": 0.0, "w_b": 0.0, "w_c": 0.0}) == pytest.approx([1 / 3] * 3)
    x = np.array([0.1, 0.2, 0.3, np.log(1e-3), 1.7, 14.6])
    assert space.decode(x) == {"w_a": 0.1, "w_b": 0.2, "w_c": 0.3, "lr": pytest.approx(1e-3), "rank": 8, "steps": 15}
    enc = space.encode({"w_a": 1.0, "w_b": 0.0, "w_c": 0.0, "lr": 1e-3, "rank": 16, "steps": 12},
                       np.random.default_rng(0))
    assert space.decode(enc) == {"w_a": 1.0, "w_b": 0.0, "w_c": 0.0, "lr": pytest.approx(1e-3), "rank": 16,
                                 "steps": 12}
    # Optuna's multi-objective default is TPE: NSGA-II must be asked for explicitly, and is.
    cfg = config_from_dict(CONFIG)
    assert isinstance(sweep.make_sampler(cfg.sweep, 0), optuna.samplers.NSGAIISampler)


def test_study_identity_and_one_driver_at_a_time(tmp_path: Path) -> None:
    cfg = config_from_dict(CONFIG, [f"state_dir={tmp_path}"])
    study = sweep.open_study(cfg)
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)  # set explicitly (Optuna's default is TPE)
    assert [t.state.name for t in study.trials] == ["WAITING"] * 3  # the λ grid is queued first, once
    assert len(sweep.open_study(cfg).trials) == 3  # reopened by the same process: nothing queued twice
    other = subprocess.Popen(["sleep", "60"])  # a live process on this host claims the study
    try:
        study.set_user_attr("driver", {"host": socket.gethostname(), "pid": other.pid})
        with pytest.raises(RuntimeError, match=f"being driven by process {other.pid}"):
            sweep.open_study(cfg)
    finally:
        other.kill()
        other.wait()
    sweep.open_study(cfg)  # a dead driver's claim is void: resuming is allowed
    changed = config_from_dict({**CONFIG, "objectives": ["helpful", "harmless"]}, [f"state_dir={tmp_path}"])
    with pytest.raises(RuntimeError, match="was made with objectives=\\['helpful', 'concise'\\]"):
        sweep.open_study(changed)
