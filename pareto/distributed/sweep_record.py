"""What a sweep records in MLflow (`pareto.distributed.sweep`): its run (resumed by a later drive of the study, never
duplicated), one nested run per trial linked to its Optuna trial number, and the finished trials' front in the
pipeline's format; the base and reward models come from the run recorder (`recorder.py`)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial

from pareto import tracking
from pareto.config import ExperimentConfig, dump_config
from pareto.distributed import recorder
from pareto.distributed.sweep_space import SearchSpace
from pareto.evaluation import PointEval
from pareto.front.types import Front, FrontPoint

_log = logging.getLogger("pareto.distributed.sweep")  # the sweep's one logger name, whichever module logs
SWEEP_TAG_VALUE = "sweep"


@contextmanager
def sweep_run(cfg: ExperimentConfig, study: optuna.Study, storage: str, uri: str,
              exp_id: str) -> Iterator[mlflow.ActiveRun]:
    """The sweep's MLflow run: the one an earlier drive of the study started (resumed), or a new one; tagged (with
    `storage`, the study's storage URL as it may be shown), with the config's params and the resolved config."""
    sw, name = cfg.sweep, study.study_name
    parent_id = _parent_run(study, uri)
    with mlflow.start_run(run_id=parent_id) if parent_id else mlflow.start_run(
            experiment_id=exp_id, run_name=f"sweep-{name}") as parent:
        if parent_id is None:
            study.set_user_attr("mlflow_run_id", parent.info.run_id)
            study.set_user_attr("mlflow_experiment", cfg.experiment_name)
        mlflow.set_tags({**recorder.run_tags(cfg, SWEEP_TAG_VALUE, sw.method), "optuna.study_name": name,
                         "optuna.storage": storage, "optuna.sampler": sw.sampler})
        _log_params_once(parent.info.run_id, uri, cfg)
        mlflow.log_text(dump_config(cfg), "config/resolved.yaml")
        yield parent


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


def stage_models(cfg: ExperimentConfig, uri: str, run_id: str, progress: bool) -> recorder.StageModels:
    """The base and reward models and the base point (the pipeline's caches, built as Ray tasks if missing), logged
    with the run so the registry's models can be served from it; a resumed sweep has them logged already."""
    logged = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
    return recorder.stage_models(cfg, progress, log_models="base_model" not in logged)


def log_trial(cfg: ExperimentConfig, name: str, number: int, space: SearchSpace, params: dict, out: dict,
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
        mlflow.log_metrics({**recorder.training_metrics(out), "repetition_rate": point.repetition_rate,
                            **recorder.scorer_metrics(cfg, point)})
        recorder.log_model_artifacts(out, {"method": cfg.sweep.method, "objectives": list(cfg.objectives),
                                           "weights": weights, "params": space.hyper(params),
                                           "base_model": cfg.model.base}, Path(tmp) / "adapter")
    return run.info.run_id


def _trial_points(trials: list[FrozenTrial], scorer: str) -> list[FrontPoint]:
    """One front point per finished trial, its model the trial run's adapter."""
    points = []
    for t in sorted(trials, key=lambda t: t.number):
        ev = t.user_attrs["evaluation"]
        points.append(FrontPoint(weights=tuple(t.user_attrs["weights"]), values=tuple(ev["mean"][scorer]),
                                 stderr=tuple(ev["stderr"][scorer]),
                                 model_uri=f"runs:/{t.user_attrs['mlflow_run_id']}/adapter",
                                 extra={"trial": t.number, "params": {k: v for k, v in t.params.items()
                                                                      if not k.startswith("w_")},
                                        "repetition_rate": ev["repetition_rate"], "mean_words": ev["mean_words"]}))
    return points


def sweep_front(cfg: ExperimentConfig, trials: list[FrozenTrial], scorer: str, meta: dict,
                base_point: PointEval | None = None) -> Front:
    """All finished trials as one front (one point per trial, its model the trial run's adapter)."""
    return recorder.make_front(cfg, cfg.sweep.method, _trial_points(trials, scorer), scorer, meta, base_point)


def log_front(cfg: ExperimentConfig, study: optuna.Study, trials: list[FrozenTrial],
               base_point: PointEval | None) -> Front:
    """The sweep's front in the pipeline's format (fronts/<method>.json), its plots and metrics."""
    sw = cfg.sweep
    oracle = recorder.task_oracle(cfg)
    meta = {"run_id": mlflow.active_run().info.run_id, "conditioned": False, "kind": SWEEP_TAG_VALUE,
            "models_trained": len(trials), "study_name": study.study_name, "sampler": sw.sampler,
            "train_seconds": float(sum(t.user_attrs["evaluation"]["train_seconds"] for t in trials))}
    scorers = [s for s in ("oracle", "reward_model") if s in trials[0].user_attrs["evaluation"]["mean"]]
    fronts = recorder.scored_fronts(cfg, sw.method, {s: _trial_points(trials, s) for s in scorers}, meta,
                                    base_point, oracle[1] if oracle else None)
    for scorer, front in fronts.items():
        mlflow.log_text(front.to_json(), f"fronts_by_scorer/{sw.method}.{scorer}.json")
    main = recorder.log_main_front(cfg, sw.method, fronts)  # the values Optuna optimised: its front is best_trials
    mlflow.log_metrics({f"{sw.method}/{k}": float(v) for k, v in main.metrics.items() if isinstance(v, int | float)})
    recorder.log_plots([fronts[scorers[0]]], oracle)
    with tempfile.TemporaryDirectory() as tmp:
        study.trials_dataframe().to_csv(Path(tmp) / "trials.csv", index=False)
        mlflow.log_artifact(str(Path(tmp) / "trials.csv"), "optuna")
    return main
