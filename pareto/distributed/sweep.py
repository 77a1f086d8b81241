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

This module owns the study and the run; the search space (`sweep_space.py`), the drivers (`sweep_drive.py`) and what
a sweep records in MLflow (`sweep_record.py`) live beside it, their public names importable from here as well.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import ray

from pareto import report, tracking
from pareto.config import ExperimentConfig, MethodsConfig, SweepConfig, mask_url
from pareto.distributed import pipeline, recorder, stages, sweep_record
from pareto.distributed.sweep_drive import (  # noqa: F401
    DriveStats,
    Finish,
    Submit,
    complete_trials,
    drive_optuna,
    drive_pymoo,
    pymoo_algorithm,
    pymoo_initial,
    resume_orphan,
)
from pareto.distributed.sweep_record import SWEEP_TAG_VALUE, sweep_front  # noqa: F401
from pareto.distributed.sweep_space import SearchSpace, search_space  # noqa: F401
from pareto.evaluation import PointEval
from pareto.front.grid import preference_grid
from pareto.front.types import Front


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
                raise RuntimeError(f"study {name!r} in {mask_url(url)} was made with {key}={attrs.get(key)!r}, "
                                   f"not {value!r}; set sweep.study_name to start a new study")
        # A resumed sampler must not replay the random draws of the first drive (it would propose the same
        # parameters again): its seed moves on with the study, deterministically.
        study.sampler = make_sampler(sw, cfg.seed + len(study.trials))
    _claim(study, name, url)
    return study


def _seed_grid(cfg: ExperimentConfig) -> np.ndarray:
    return preference_grid(cfg.k, n_points=cfg.evaluation.grid_points)


_HELD: dict[Path, int] = {}  # lock file -> open descriptor, for the study locks this process holds


def _lock_path(name: str, url: str) -> Path:
    """One lock file per (storage, study) on this host: every driver of the study on this host meets at it."""
    digest = hashlib.sha256(f"{url}\n{name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pareto-sweep-{digest}.lock"


def _claim(study: optuna.Study, name: str, url: str) -> None:
    """One driver per study: a second live driver would mistake the first one's running trials for orphans.

    The claim is an exclusive `flock` on a lock file, atomic and released by the kernel when its process ends
    (killed or not), so a dead driver never blocks a resume. The study's `driver` attribute names the holder; a
    live process it names on this host that holds no lock here (a driver of an older pareto) is refused as well.
    """
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    path = _lock_path(name, url)
    if path not in _HELD:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # read-only is enough for flock, and any user can open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            _refuse(name, study.user_attrs.get("driver"))
        _HELD[path] = fd
    other = study.user_attrs.get("driver")
    if other and other != me and other.get("host") == me["host"] and _alive(int(other.get("pid", -1))):
        _release_lock(path)
        _refuse(name, other)
    study.set_user_attr("driver", me)


def _refuse(name: str, holder: dict | None) -> None:
    who = f"process {holder['pid']}" if holder and holder.get("host") == socket.gethostname() else "another process"
    raise RuntimeError(f"study {name!r} is being driven by {who} on this host; wait for it to finish (or stop it) "
                       "before resuming")


def _release(study: optuna.Study, name: str, url: str) -> None:
    """The end of a drive: the claim is cleared and the lock let go."""
    study.set_user_attr("driver", None)
    _release_lock(_lock_path(name, url))


def _release_lock(path: Path) -> None:
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)  # closing the descriptor lets the flock go


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
    state = cfg.state_path()
    uri = tracking.tracking_uri(cfg.tracking.uri, state)
    exp_id = tracking.setup(uri, cfg.experiment_name, state)
    study = open_study(cfg)
    name, url = study_name(cfg), storage_url(cfg)
    recorder.init_ray(cfg)
    with sweep_record.sweep_run(cfg, study, mask_url(url), uri, exp_id) as parent:
        result = SweepResult(name, url, parent.info.run_id, uri, cfg.experiment_name, cfg.sweep.method)
        models = sweep_record.stage_models(cfg, uri, parent.info.run_id, progress)
        result.stats = _drive(cfg, study, models, progress)
        _record_front(cfg, study, models, result)
        result.seconds = time.perf_counter() - start
        mlflow.log_metric("sweep_seconds", result.seconds)
    _release(study, name, url)  # the next drive of this study needs no liveness check
    return result


def _drive(cfg: ExperimentConfig, study: optuna.Study, models: recorder.StageModels, progress: bool) -> DriveStats:
    """Run the study's trials (each a Ray task: train at the trial's λ and hyper-parameters, evaluate) until it has
    `sweep.n_trials` finished ones, with Optuna's sampler or pymoo."""
    sw, name, space = cfg.sweep, study_name(cfg), search_space(cfg)
    mcfg = getattr(cfg.methods, sw.method)
    cfg_ref, base_ref, rm_ref = ray.put(cfg), ray.put(models.base), ray.put(models.reward)
    trial_task = recorder.remote(stages.trial_stage, cfg)

    def submit(number: int, params: dict[str, Any]):
        return trial_task.remote(cfg_ref, sw.method, base_ref, rm_ref, space.weights(params),
                                 space.hyper(params), number)

    def finish(trial: optuna.Trial, params: dict[str, Any], out: dict) -> list[float]:
        point = PointEval.from_dict(out["points"][0])
        run_id = sweep_record.log_trial(cfg, name, trial.number, space, params, out, point)
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
        return drive_pymoo(study, space, submit, finish, sw.n_trials, sw.concurrency, algorithm, cfg.seed,
                           sw.max_failed_trials, progress)
    return drive_optuna(study, space, submit, finish, sw.n_trials, sw.concurrency, sw.max_failed_trials, progress)


def _record_front(cfg: ExperimentConfig, study: optuna.Study, models: recorder.StageModels,
                  result: SweepResult) -> None:
    """The finished trials' front, the study's counts and the Pareto trials in the Model Registry."""
    trials = complete_trials(study)
    result.n_complete = len(trials)
    result.pareto_trials = sorted(t.number for t in study.best_trials)
    result.front = sweep_record.log_front(cfg, study, trials, models.base_point)
    mlflow.log_metrics({"trials_complete": len(trials), "trials_pareto": len(result.pareto_trials)})
    if cfg.tracking.registry:
        from pareto import registry

        point_tags = {p.model_uri: {"optuna.study_name": result.study_name,
                                    "optuna.trial_number": str(p.extra["trial"]),
                                    "params": json.dumps(p.extra["params"])}
                      for p in result.front.points}
        result.registered = registry.register_front(result.front, experiment=cfg.experiment_name,
                                                    source_run_id=result.run_id, tracking_uri=result.tracking_uri,
                                                    kind=SWEEP_TAG_VALUE, point_tags=point_tags)


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
    lines += [f"Optuna study {result.study_name!r} in {mask_url(result.storage)}",
              f"  dashboard:     optuna-dashboard {mask_url(result.storage)} --host 127.0.0.1",
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
