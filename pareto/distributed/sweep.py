"""Preference sweeps: a multi-objective search over λ and hyper-parameters of a per-weight method.

The driver owns the study (Optuna ask/tell, or pymoo ask-and-tell recorded in the same Optuna storage) and hands
each trial to a Ray task (train one model at the trial's λ and hyper-parameters, evaluate it), at most
`sweep.concurrency` in flight, collected with `ray.wait`. The study lives in an Optuna storage (SQLite in the state
folder by default, an RDB URL on a cluster), so `optuna-dashboard` can open it and a killed sweep resumes:

* finished trials are never re-run (their values stay in the storage);
* trials the killed driver had in flight are still RUNNING in the storage: they are re-run with the same
  parameters and told under the same trial number, so no trial is lost and none runs twice;
* pymoo keeps its population in memory, so it is replayed deterministically (same seed, same values read back
  from the storage) up to where it stopped.

Every trial is an MLflow nested run of the sweep's run, tagged with its Optuna trial number (and the trial
carries the MLflow run id as a user attribute). At the end the non-dominated trials form the sweep's front,
which is logged like a pipeline's and registered in the Model Registry.

A conditioned method (one model for every λ) is not searched: its one model is trained once and evaluated on a
λ grid, which is exactly the pipeline restricted to that method.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before Ray is imported: every Ray listener on loopback, the job CLI usable without tokens (as in pipeline.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import ray  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.distributions import (  # noqa: E402
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pareto import report, tracking  # noqa: E402
from pareto.config import ExperimentConfig, MethodsConfig, SearchRange, SweepConfig, dump_config  # noqa: E402
from pareto.data.task import build_task  # noqa: E402
from pareto.distributed import pipeline, recorder, stages  # noqa: E402
from pareto.distributed.bundle import unpack  # noqa: E402
from pareto.evaluation import PointEval  # noqa: E402
from pareto.front.grid import n_das_dennis, preference_grid  # noqa: E402
from pareto.front.types import Front, FrontPoint  # noqa: E402

_log = logging.getLogger(__name__)
SWEEP_TAG_VALUE = "sweep"


# ---- the search space ------------------------------------------------------------------------------------------
class SearchSpace:
    """λ as K raw weights in [0, 1] normalised onto the simplex, plus the method's hyper-parameters.

    The same space serves Optuna (distributions) and pymoo (a box [xl, xu] with an encoding of each parameter).
    """

    def __init__(self, objectives: tuple[str, ...], params: dict[str, SearchRange], int_keys: set[str]) -> None:
        self.objectives = objectives
        self.params = params
        self.int_keys = int_keys
        self.weight_keys = [f"w_{o}" for o in objectives]

    def distributions(self) -> dict[str, BaseDistribution]:
        dists: dict[str, BaseDistribution] = {k: FloatDistribution(0.0, 1.0) for k in self.weight_keys}
        for key, rng in self.params.items():
            if rng.choices is not None:
                dists[key] = CategoricalDistribution(list(rng.choices))
            elif key in self.int_keys:
                dists[key] = IntDistribution(int(rng.low), int(rng.high), log=rng.log)
            else:
                dists[key] = FloatDistribution(rng.low, rng.high, log=rng.log)
        return dists

    def weights(self, params: dict[str, Any]) -> list[float]:
        raw = np.array([float(params[k]) for k in self.weight_keys])
        total = raw.sum()
        lam = raw / total if total > 0 else np.full(len(raw), 1.0 / len(raw))
        return lam.tolist()

    def hyper(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: params[k] for k in self.params}

    def defaults(self, lam: np.ndarray, method_cfg: Any) -> dict[str, Any]:
        """Trial parameters for a grid λ: the method's configured hyper-parameters where they are in range."""
        out: dict[str, Any] = {k: float(v) for k, v in zip(self.weight_keys, lam, strict=True)}
        for key, rng in self.params.items():
            value = getattr(method_cfg, key)
            inside = value in rng.choices if rng.choices is not None else rng.low <= value <= rng.high
            if inside:
                out[key] = value
        return out

    # pymoo: every parameter is a real variable; choices are indices, log ranges live in log space.
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = [0.0] * len(self.weight_keys), [1.0] * len(self.weight_keys)
        for rng in self.params.values():
            if rng.choices is not None:
                lo.append(0.0)
                hi.append(float(len(rng.choices)) - 1e-9)
            elif rng.log:
                lo.append(math.log(rng.low))
                hi.append(math.log(rng.high))
            else:
                lo.append(float(rng.low))
                hi.append(float(rng.high))
        return np.array(lo), np.array(hi)

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {k: float(np.clip(v, 0.0, 1.0)) for k, v in zip(self.weight_keys, x, strict=False)}
        for key, v in zip(self.params, x[len(self.weight_keys):], strict=True):
            rng = self.params[key]
            if rng.choices is not None:
                out[key] = rng.choices[int(np.clip(math.floor(v), 0, len(rng.choices) - 1))]
                continue
            value = math.exp(v) if rng.log else float(v)
            value = min(max(value, rng.low), rng.high)
            out[key] = int(round(value)) if key in self.int_keys else value
        return out

    def encode(self, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """A pymoo row for (possibly partial) trial parameters; missing ones are drawn uniformly in the box."""
        lo, hi = self.bounds()
        x = rng.uniform(lo, hi)
        for i, key in enumerate(self.weight_keys):
            if key in params:
                x[i] = params[key]
        for j, (key, srange) in enumerate(self.params.items(), start=len(self.weight_keys)):
            if key not in params:
                continue
            v = params[key]
            if srange.choices is not None:
                x[j] = srange.choices.index(v) + 0.5
            else:
                x[j] = math.log(v) if srange.log else float(v)
        return x


def search_space(cfg: ExperimentConfig) -> SearchSpace:
    sw = cfg.sweep
    mcfg = getattr(cfg.methods, sw.method)
    fields = type(mcfg).model_fields
    return SearchSpace(tuple(cfg.objectives), dict(sw.params), {k for k in sw.params if fields[k].annotation is int})


# ---- the study ---------------------------------------------------------------------------------------------------
def storage_url(cfg: ExperimentConfig) -> str:
    if cfg.sweep.storage:
        return cfg.sweep.storage
    state = cfg.state_path()
    state.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state / 'optuna.db'}"


def study_name(cfg: ExperimentConfig) -> str:
    return cfg.sweep.study_name or cfg.name


def make_sampler(sw: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    """NSGA-II is set explicitly: Optuna 5's default for multi-objective studies is TPE."""
    if sw.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=sw.population_size, seed=seed)
    if sw.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=sw.population_size, seed=seed)
    if sw.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # in-flight trials steer later asks away
    return optuna.samplers.RandomSampler(seed=seed)  # pymoo decides every parameter; the sampler is never asked


def open_study(cfg: ExperimentConfig) -> optuna.Study:
    """Create the study, or load it to resume; refuse one made for other objectives, method or sampler."""
    sw = cfg.sweep
    name, url = study_name(cfg), storage_url(cfg)
    identity = {"objectives": list(cfg.objectives), "method": sw.method, "sampler": sw.sampler,
                "scorer": cfg.evaluation.scorer}
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize"] * cfg.k,
                                sampler=make_sampler(sw, cfg.seed), load_if_exists=True)
    attrs = study.user_attrs
    if "objectives" not in attrs:
        for key, value in identity.items():
            study.set_user_attr(key, value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.objectives))
        if sw.seed_grid and not sw.uses_pymoo and not study.trials:
            # The first trials are the λ grid (vertices included) at the configured hyper-parameters.
            space, mcfg = search_space(cfg), getattr(cfg.methods, sw.method)
            for lam in _seed_grid(cfg)[: sw.n_trials]:
                study.enqueue_trial(space.defaults(lam, mcfg))
    else:
        for key, value in identity.items():
            if attrs.get(key) != value:
                raise RuntimeError(f"study {name!r} in {_safe_url(url)} was made with {key}={attrs.get(key)!r}, "
                                   f"not {value!r}; set sweep.study_name to start a new study")
        # A resumed sampler must not replay the random draws of the first drive (it would propose the same
        # parameters again): its seed moves on with the study, deterministically.
        study.sampler = make_sampler(sw, cfg.seed + len(study.trials))
    _claim(study, name)
    return study


def _seed_grid(cfg: ExperimentConfig) -> np.ndarray:
    return preference_grid(cfg.k, n_points=cfg.evaluation.grid_points)


def _claim(study: optuna.Study, name: str) -> None:
    """One driver per study: a second live driver would mistake the first one's running trials for orphans."""
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    other = study.user_attrs.get("driver")
    if other and other != me and other.get("host") == me["host"] and _alive(int(other.get("pid", -1))):
        raise RuntimeError(f"study {name!r} is being driven by process {other['pid']} on this host; wait for it "
                           "to finish (or stop it) before resuming")
    study.set_user_attr("driver", me)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _safe_url(url: str) -> str:
    """A storage URL without its password (for logs and tags)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


# ---- the drivers -----------------------------------------------------------------------------------------------
# submit(trial_number, params) -> ObjectRef of the trial's output; finish(trial, params, output) -> values.
Submit = Callable[[int, dict[str, Any]], Any]
Finish = Callable[[optuna.Trial, dict[str, Any], Any], list[float]]


@dataclass
class DriveStats:
    ran: list[int] = field(default_factory=list)        # trial numbers this process ran
    resumed: list[int] = field(default_factory=list)    # of which orphans of a killed driver
    failed: list[int] = field(default_factory=list)


def _as_trial(study: optuna.Study, t: FrozenTrial) -> optuna.Trial:
    return optuna.trial.Trial(study, t._trial_id)


def _settle(study: optuna.Study, trial: optuna.Trial, params: dict, ref: Any, finish: Finish, stats: DriveStats,
            max_failed: int) -> list[float] | None:
    """Collect a finished Ray task: tell its values, or FAIL it (and stop once too many have failed)."""
    try:
        out = ray.get(ref)
        values = finish(trial, params, out)
    except Exception as err:  # a trial's failure is the study's data, not the driver's crash
        _log.warning("trial %d failed: %s", trial.number, err)
        study.tell(trial.number, state=TrialState.FAIL)
        stats.failed.append(trial.number)
        if len(stats.failed) > max_failed:
            raise RuntimeError(f"{len(stats.failed)} sweep trials failed (sweep.max_failed_trials={max_failed}); "
                               f"last error: {err}") from err
        return None
    study.tell(trial.number, values)
    stats.ran.append(trial.number)
    return values


def drive_optuna(study: optuna.Study, space: SearchSpace, submit: Submit, finish: Finish, n_trials: int,
                 concurrency: int, max_failed: int = 3, progress: bool = True) -> DriveStats:
    """Ask/tell until the study has `n_trials` COMPLETE trials, `concurrency` Ray tasks in flight at most.

    Trials left RUNNING by a killed driver are re-run first, with their own parameters and trial number.
    """
    stats = DriveStats()
    orphans = sorted(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), key=lambda t: t.number)
    inflight: dict[Any, tuple[optuna.Trial, dict]] = {}
    done = len(complete_trials(study))
    keep = max(0, min(len(orphans), n_trials - done))
    for t in orphans[keep:]:
        study.tell(t.number, state=TrialState.FAIL)  # n_trials was lowered: close what is no longer wanted
    orphans = orphans[:keep]
    bar = tqdm(total=n_trials, initial=done, desc="sweep", unit="trial", disable=not progress)
    while True:
        while len(inflight) < concurrency and done + len(inflight) < n_trials:
            if orphans:
                trial = _as_trial(study, orphans.pop(0))
                stats.resumed.append(trial.number)
            else:
                trial = study.ask(space.distributions())
            params = dict(trial.params)
            trial.set_user_attr("weights", space.weights(params))
            inflight[submit(trial.number, params)] = (trial, params)
        if not inflight:
            break
        ready, _ = ray.wait(list(inflight), num_returns=1)
        for ref in ready:
            trial, params = inflight.pop(ref)
            if _settle(study, trial, params, ref, finish, stats, max_failed) is not None:
                done += 1
                bar.update(1)
                bar.set_postfix_str(f"trial {trial.number}")
    bar.close()
    return stats


def pymoo_algorithm(name: str, space: SearchSpace, pop_size: int, x0: np.ndarray):
    """NSGA-II or NSGA-III whose first generation is `x0`; NSGA-III's reference directions are Das-Dennis."""
    k = len(space.objectives)
    if name == "pymoo-nsga3":
        from pymoo.algorithms.moo.nsga3 import NSGA3

        p = 1
        while n_das_dennis(k, p + 1) <= pop_size:
            p += 1
        ref_dirs = preference_grid(k, n_partitions=p)
        return NSGA3(ref_dirs=ref_dirs, pop_size=pop_size, sampling=x0)
    from pymoo.algorithms.moo.nsga2 import NSGA2

    return NSGA2(pop_size=pop_size, sampling=x0)


def pymoo_initial(space: SearchSpace, grid: np.ndarray, method_cfg: Any, pop_size: int, seed: int) -> np.ndarray:
    """The first generation: the preference grid (reference directions) at the configured hyper-parameters, then
    uniform draws in the box."""
    rng = np.random.default_rng(seed)
    rows = [space.encode(space.defaults(lam, method_cfg), rng) for lam in grid[:pop_size]]
    lo, hi = space.bounds()
    rows += [rng.uniform(lo, hi) for _ in range(pop_size - len(rows))]
    return np.array(rows)


def drive_pymoo(study: optuna.Study, space: SearchSpace, submit: Submit, finish: Finish, n_trials: int,
                concurrency: int, algorithm, seed: int, max_failed: int = 3, progress: bool = True) -> DriveStats:
    """pymoo ask-and-tell; every evaluation is an Optuna trial (user attrs pymoo_generation, pymoo_index).

    pymoo is deterministic given its seed and the values it is told, so a resumed sweep replays the generations
    already in the storage (reading values back, running nothing) and goes on from where the killed one stopped.
    """
    from pymoo.core.problem import Problem
    from pymoo.problems.static import StaticProblem

    xl, xu = space.bounds()
    problem = Problem(n_var=len(xl), n_obj=len(space.objectives), xl=xl, xu=xu)
    algorithm.setup(problem, termination=("n_eval", n_trials), seed=seed, verbose=False)
    stats = DriveStats()
    # A driver killed between enqueue and ask left WAITING trials: ask them now so they are RUNNING orphans of
    # their (generation, index) slot, never popped later by an ask meant for another individual.
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.ask(space.distributions())
    by_slot: dict[tuple[int, int], list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        if "pymoo_generation" in t.user_attrs:
            by_slot.setdefault((t.user_attrs["pymoo_generation"], t.user_attrs["pymoo_index"]), []).append(t)
    evaluated, generation = 0, 0
    bar = tqdm(total=n_trials, desc="sweep", unit="trial", disable=not progress)
    while evaluated < n_trials and algorithm.has_next():
        pop = algorithm.ask()
        pop = pop[: n_trials - evaluated]  # the last generation may be partial: exactly n_trials evaluations
        X = pop.get("X")
        F = np.zeros((len(pop), len(space.objectives)))
        queue: list[tuple[int, optuna.Trial | None, dict]] = []
        for i, x in enumerate(X):
            params = space.decode(x)
            previous = by_slot.get((generation, i), [])
            done = next((t for t in previous if t.state == TrialState.COMPLETE), None)
            if done is not None:
                F[i] = -np.asarray(done.values)  # pymoo minimises
                bar.update(1)
                continue
            orphan = next((t for t in previous if t.state == TrialState.RUNNING), None)
            if orphan is not None:
                stats.resumed.append(orphan.number)
            queue.append((i, _as_trial(study, orphan) if orphan is not None else None, params))
        inflight: dict[Any, tuple[int, optuna.Trial, dict]] = {}
        while queue or inflight:
            while queue and len(inflight) < concurrency:
                i, trial, params = queue.pop(0)
                if trial is None:
                    study.enqueue_trial(params, user_attrs={"pymoo_generation": generation, "pymoo_index": i},
                                        skip_if_exists=False)
                    trial = study.ask(space.distributions())
                trial.set_user_attr("weights", space.weights(params))
                inflight[submit(trial.number, params)] = (i, trial, params)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                i, trial, params = inflight.pop(ref)
                values = _settle(study, trial, params, ref, finish, stats, max_failed)
                if values is None:
                    queue.append((i, None, params))  # a failed evaluation is retried as a new trial
                    continue
                F[i] = -np.asarray(values)
                bar.update(1)
        algorithm.evaluator.eval(StaticProblem(problem, F=F), pop)
        algorithm.tell(infills=pop)
        evaluated += len(pop)
        generation += 1
    bar.close()
    return stats


# ---- the sweep ------------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    study_name: str
    storage: str
    run_id: str
    tracking_uri: str
    experiment: str
    method: str
    n_complete: int = 0
    pareto_trials: list[int] = field(default_factory=list)   # study.best_trials numbers
    front: Front | None = None
    registered: list = field(default_factory=list)
    stats: DriveStats = field(default_factory=DriveStats)
    seconds: float = 0.0
    pipeline: Any = None   # conditioned methods: the PipelineResult of the grid evaluation


def run_sweep(cfg: ExperimentConfig, progress: bool = True) -> SweepResult:
    """Run (or resume) the sweep `cfg.sweep` describes."""
    if cfg.sweep is None:
        raise ValueError("the config has no sweep section; add one (see configs/sweep_quickstart.yaml)")
    mcfg = getattr(cfg.methods, cfg.sweep.method)
    stages.preflight(cfg)  # as `pareto run` does, before any compute
    if not mcfg.per_weight:
        return _grid_sweep(cfg, progress)
    start = time.perf_counter()
    sw = cfg.sweep
    state = cfg.state_path()
    uri = tracking.tracking_uri(cfg.tracking.uri, state)
    exp_id = tracking.setup(uri, cfg.experiment_name, state)
    study = open_study(cfg)
    name, url = study_name(cfg), storage_url(cfg)
    space = search_space(cfg)
    recorder.init_ray(cfg)

    parent_id = _parent_run(study, uri)
    with mlflow.start_run(run_id=parent_id) if parent_id else mlflow.start_run(
            experiment_id=exp_id, run_name=f"sweep-{name}") as parent:
        if parent_id is None:
            study.set_user_attr("mlflow_run_id", parent.info.run_id)
            study.set_user_attr("mlflow_experiment", cfg.experiment_name)
        mlflow.set_tags({tracking.PIPELINE_TAG: SWEEP_TAG_VALUE, "pareto.task": cfg.task.name,
                         "pareto.objectives": ",".join(cfg.objectives), "pareto.methods": sw.method,
                         "optuna.study_name": name, "optuna.storage": _safe_url(url), "optuna.sampler": sw.sampler})
        _log_params_once(parent.info.run_id, uri, cfg)
        mlflow.log_text(dump_config(cfg), "config/resolved.yaml")
        result = SweepResult(name, url, parent.info.run_id, uri, cfg.experiment_name, sw.method)

        models = _models(cfg, uri, parent.info.run_id, progress)
        cfg_ref, base_ref, rm_ref = ray.put(cfg), ray.put(models.base), ray.put(models.reward)
        trial_task = recorder.remote(stages.trial_stage, cfg)

        def submit(number: int, params: dict[str, Any]):
            return trial_task.remote(cfg_ref, sw.method, base_ref, rm_ref, space.weights(params),
                                     space.hyper(params), number)

        def finish(trial: optuna.Trial, params: dict[str, Any], out: dict) -> list[float]:
            point = PointEval.from_dict(out["points"][0])
            run_id = _log_trial(cfg, name, trial.number, space, params, out, point)
            trial.set_user_attr("mlflow_run_id", run_id)
            trial.set_user_attr("evaluation", {"mean": {k: list(v) for k, v in point.mean.items()},
                                               "stderr": {k: list(v) for k, v in point.stderr.items()},
                                               "repetition_rate": point.repetition_rate,
                                               "mean_words": point.mean_words,
                                               "train_seconds": out["train_seconds"]})
            return list(point.mean[cfg.evaluation.scorer])

        if sw.uses_pymoo:
            x0 = pymoo_initial(space, _seed_grid(cfg) if sw.seed_grid else np.zeros((0, cfg.k)), mcfg,
                               sw.population_size, cfg.seed)
            algorithm = pymoo_algorithm(sw.sampler, space, sw.population_size, x0)
            result.stats = drive_pymoo(study, space, submit, finish, sw.n_trials, sw.concurrency, algorithm,
                                       cfg.seed, sw.max_failed_trials, progress)
        else:
            result.stats = drive_optuna(study, space, submit, finish, sw.n_trials, sw.concurrency,
                                        sw.max_failed_trials, progress)

        trials = complete_trials(study)
        result.n_complete = len(trials)
        result.pareto_trials = sorted(t.number for t in study.best_trials)
        result.front = _log_front(cfg, study, trials, models.base_point)
        mlflow.log_metrics({"trials_complete": len(trials), "trials_pareto": len(result.pareto_trials)})
        if cfg.tracking.registry:
            from pareto import registry

            point_tags = {p.model_uri: {"optuna.study_name": name, "optuna.trial_number": str(p.extra["trial"]),
                                        "params": json.dumps(p.extra["params"])}
                          for p in result.front.points}
            result.registered = registry.register_front(result.front, experiment=cfg.experiment_name,
                                                        source_run_id=parent.info.run_id, tracking_uri=uri,
                                                        kind=SWEEP_TAG_VALUE, point_tags=point_tags)
        result.seconds = time.perf_counter() - start
        mlflow.log_metric("sweep_seconds", result.seconds)
    study.set_user_attr("driver", None)  # released: the next drive of this study needs no liveness check
    return result


def _grid_sweep(cfg: ExperimentConfig, progress: bool) -> SweepResult:
    """A conditioned method: train its one model, evaluate it on the λ grid (no retraining per λ)."""
    sw = cfg.sweep
    only = MethodsConfig(**{sw.method: getattr(cfg.methods, sw.method)})
    evaluation = cfg.evaluation.model_copy(update={"grid_points": sw.grid_points or cfg.evaluation.grid_points})
    grid_cfg = cfg.model_copy(update={"methods": only, "evaluation": evaluation})
    out = pipeline.run_pipeline(grid_cfg, progress=progress)
    front = out.fronts[sw.method]
    return SweepResult(study_name(cfg), "", out.run_id, out.tracking_uri, out.experiment, sw.method,
                       n_complete=len(front.points), front=front, registered=out.registered, seconds=out.seconds,
                       pipeline=out)


def _parent_run(study: optuna.Study, uri: str) -> str | None:
    """The MLflow run of an earlier, interrupted drive of this study (resumed, not duplicated)."""
    run_id = study.user_attrs.get("mlflow_run_id")
    if not run_id:
        return None
    try:
        MlflowClient(uri).get_run(run_id)
    except Exception:
        return None  # tracked elsewhere before: start a new run here
    return run_id


def _log_params_once(run_id: str, uri: str, cfg: ExperimentConfig) -> None:
    """MLflow params are immutable: a resumed sweep logs only keys the run does not have yet."""
    have = MlflowClient(uri).get_run(run_id).data.params
    new = {k: v for k, v in cfg.flat().items() if k not in have}
    changed = sorted(k for k, v in cfg.flat().items() if k in have and have[k] != str(v))
    if changed:
        _log.warning("resumed sweep: config keys changed since the run started (kept the old params): %s", changed)
        mlflow.set_tag("pareto.changed_on_resume", ",".join(changed)[:5000])
    if new:
        mlflow.log_params(new)


def _models(cfg: ExperimentConfig, uri: str, run_id: str, progress: bool) -> recorder.StageModels:
    """The base and reward models and the base point (the pipeline's caches, built as Ray tasks if missing), logged
    with the run so the registry's models can be served from it; a resumed sweep has them logged already."""
    logged = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
    return recorder.stage_models(cfg, progress, log_models="base_model" not in logged)


def _log_trial(cfg: ExperimentConfig, name: str, number: int, space: SearchSpace, params: dict, out: dict,
               point: PointEval) -> str:
    """The trial's nested run: λ, hyper-parameters, training curves, objective means, the adapter."""
    parent = mlflow.active_run()
    client = MlflowClient()
    # A driver killed between logging and telling left a run for this trial number: replace it, never duplicate.
    stale = client.search_runs([parent.info.experiment_id], filter_string=(
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`optuna.trial_number` = '{number}'"))
    for run in stale:
        client.delete_run(run.info.run_id)
    weights = space.weights(params)
    with mlflow.start_run(run_name=f"trial-{number}", nested=True) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags({"method": cfg.sweep.method, "optuna.study_name": name, "optuna.trial_number": str(number),
                         tracking.PIPELINE_TAG: "trial"})
        mlflow.log_params({"weights": weights, **{f"trial.{k}": v for k, v in space.hyper(params).items()}})
        tracking.log_history(out["history"])
        metrics = {"best_step": out["best_step"], "steps": out["steps"], "train_seconds": out["train_seconds"],
                   "eval_seconds": out["eval_seconds"], "tokens_per_second": out["tokens_per_second"],
                   "repetition_rate": point.repetition_rate}
        for scorer, means in point.mean.items():
            metrics.update({f"{scorer}/{o}": v for o, v in zip(cfg.objectives, means, strict=True)})
        mlflow.log_metrics(metrics)
        tracking.log_dir(unpack(out["adapter"], Path(tmp) / "adapter"), "adapter")
        mlflow.log_dict({"method": cfg.sweep.method, "objectives": list(cfg.objectives), "weights": weights,
                         "params": space.hyper(params), "base_model": cfg.model.base}, "model_meta.json")
        mlflow.log_dict({"points": out["points"]}, "evaluation.json")
    return run.info.run_id


def sweep_front(cfg: ExperimentConfig, trials: list[FrozenTrial], scorer: str, meta: dict,
                base_point: PointEval | None = None) -> Front:
    """All finished trials as one front (one point per trial, its model the trial run's adapter)."""
    points = []
    for t in sorted(trials, key=lambda t: t.number):
        ev = t.user_attrs["evaluation"]
        points.append(FrontPoint(weights=tuple(t.user_attrs["weights"]), values=tuple(ev["mean"][scorer]),
                                 stderr=tuple(ev["stderr"][scorer]),
                                 model_uri=f"runs:/{t.user_attrs['mlflow_run_id']}/adapter",
                                 extra={"trial": t.number, "params": {k: v for k, v in t.params.items()
                                                                      if not k.startswith("w_")},
                                        "repetition_rate": ev["repetition_rate"], "mean_words": ev["mean_words"]}))
    return recorder.make_front(cfg, cfg.sweep.method, points, scorer, meta, base_point)


def _log_front(cfg: ExperimentConfig, study: optuna.Study, trials: list[FrozenTrial],
               base_point: PointEval | None) -> Front:
    """The sweep's front in the pipeline's format (fronts/<method>.json), its plots and metrics."""
    sw = cfg.sweep
    oracle = stages.oracle_front(build_task(cfg), cfg, n_prompts=cfg.evaluation.n_prompts)
    meta = {"run_id": mlflow.active_run().info.run_id, "conditioned": False, "kind": SWEEP_TAG_VALUE,
            "models_trained": len(trials), "study_name": study.study_name, "sampler": sw.sampler,
            "train_seconds": float(sum(t.user_attrs["evaluation"]["train_seconds"] for t in trials))}
    scorers = [s for s in ("oracle", "reward_model") if s in trials[0].user_attrs["evaluation"]["mean"]]
    fronts = {}
    for scorer in scorers:
        front = sweep_front(cfg, trials, scorer, meta, base_point)
        front.compute_metrics(oracle_front=oracle[1] if scorer == "oracle" and oracle else None)
        fronts[scorer] = front
        mlflow.log_text(front.to_json(), f"fronts_by_scorer/{sw.method}.{scorer}.json")
    main = fronts[recorder.main_scorer(cfg, scorers)]  # the values Optuna optimised: best_trials are its front
    mlflow.log_text(main.to_json(), f"fronts/{sw.method}.json")
    mlflow.log_metrics({f"{sw.method}/{k}": float(v) for k, v in main.metrics.items() if isinstance(v, int | float)})
    recorder.log_plots([fronts[scorers[0]]], oracle)
    with tempfile.TemporaryDirectory() as tmp:
        study.trials_dataframe().to_csv(Path(tmp) / "trials.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "trials.csv"), "optuna")
    return main


def summary(result: SweepResult, cfg: ExperimentConfig) -> str:
    """The closing report of `pareto sweep`."""
    sw = cfg.sweep
    if result.pipeline is not None:
        return (f"pareto sweep: {sw.method} is conditioned: one model evaluated on a λ grid of "
                f"{result.n_complete} points (no retraining)\n" + report.summary(result.pipeline, cfg)
                + _registered_lines(result))
    st = result.stats
    lines = [f"pareto sweep: study {result.study_name!r} ({sw.sampler}, {sw.method}) — {result.n_complete}/"
             f"{sw.n_trials} trials finished in {result.seconds:.0f} s, concurrency {sw.concurrency}; this run "
             f"ran {len(st.ran)} trial(s), resumed {len(st.resumed)} interrupted, {len(st.failed)} failed",
             f"Pareto trials (study.best_trials): {result.pareto_trials}", ""]
    if result.front is not None:
        lines += [f"== sweep front ({result.front.scorer} scores; one model per trial)", result.front.table(), ""]
    lines += [f"Optuna study {result.study_name!r} in {_safe_url(result.storage)}",
              f"  dashboard:     optuna-dashboard {_safe_url(result.storage)} --host 127.0.0.1",
              f"MLflow run {result.run_id} in experiment {result.experiment!r} at {result.tracking_uri}",
              f"  MLflow UI:     mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1"]
    return "\n".join(lines) + _registered_lines(result)


def _registered_lines(result: SweepResult) -> str:
    if not result.registered:
        return ""
    versions = ", ".join(f"v{r.version}" for r in result.registered)
    name = result.registered[0].name
    return (f"\nregistered in the Model Registry as {name!r}: {versions}\n"
            f"  ask it:        pareto query --experiment {result.experiment} --weights "
            f"{','.join(['%.2f' % (1 / len(result.registered[0].objectives))] * len(result.registered[0].objectives))}"
            f" --prompt \"...\"")
