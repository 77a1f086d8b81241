"""The pipeline on Ray: base model and reward model, the base model's own point, methods, fronts; everything
tracked in MLflow.

Stages run as Ray tasks (a local Ray when no cluster address is given, the cluster under `ray job submit`) through
the run recorder (`recorder.py`), which owns the stage caches and how fronts are built and logged; small models
travel by value and large ones by reference, so workers need no shared filesystem for the tiny task and a shared
state folder for real models.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import ray
from mlflow.exceptions import MlflowException

from pareto import tracking
from pareto.config import PPO_METHODS, ExperimentConfig, dump_config
from pareto.distributed import recorder, stages
from pareto.front.grid import preference_grid
from pareto.front.types import Front


@dataclass
class PipelineResult:
    run_id: str
    tracking_uri: str
    experiment: str
    fronts: dict[str, Front] = field(default_factory=dict)
    reward_accuracy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    registered: list = field(default_factory=list)  # registry.RegisteredModel of the non-dominated models
    fronts_by_scorer: dict[str, dict[str, Front]] = field(default_factory=dict)  # method -> scorer -> front
    task: dict = field(default_factory=dict)  # the task's description: pairs, prompts, rows dropped / truncated


init_ray = recorder.init_ray  # kept for callers (benchmarks, tests) that start Ray the pipeline's way


def eval_grid(cfg: ExperimentConfig) -> np.ndarray:
    return preference_grid(cfg.k, n_points=cfg.evaluation.grid_points)


def run_pipeline(cfg: ExperimentConfig, progress: bool = True) -> PipelineResult:
    start = time.perf_counter()
    state = stages.preflight(cfg)
    uri = tracking.tracking_uri(cfg.tracking.uri, state)
    exp_id = tracking.setup(uri, cfg.experiment_name, state)
    recorder.init_ray(cfg)
    grid = eval_grid(cfg)

    unsent: Path | None = None  # where a run's outputs went when the tracking server vanished before they were logged
    try:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{cfg.name}-seed{cfg.seed}") as parent:
            mlflow.set_tags({**recorder.run_tags(cfg, "pipeline", ",".join(cfg.methods.enabled())),
                             "pareto.dataset": cfg.task.dataset.source if cfg.task.dataset else "",
                             tracking.DRIVER_TAG: tracking.driver_id()})
            tracking.fail_dead_runs(uri, exp_id, parent.info.run_id)
            mlflow.log_params(cfg.flat())
            mlflow.log_text(dump_config(cfg), "config/resolved.yaml")
            result = PipelineResult(parent.info.run_id, uri, cfg.experiment_name)

            # ---- stage 1: base model, reward model and the base model's own point (cached) ----------------------
            models = recorder.stage_models(cfg, progress)
            result.reward_accuracy, result.task = models.accuracy, models.task
            # ---- stage 2: methods ------------------------------------------------------------------------------
            outputs = _run_methods(cfg, models, grid, progress)
            # ---- stage 3: fronts, metrics, artifacts ---------------------------------------------------------------
            try:
                _log_fronts(cfg, outputs, models, result, uri)
            except (MlflowException, OSError):
                if tracking.server_problem(uri) is not None:  # an outage (not a bug): keep what was not logged
                    unsent = recorder.keep_unsent(outputs, state / "unsent" / result.run_id)
                raise
            result.seconds = time.perf_counter() - start
            mlflow.log_metric("pipeline_seconds", result.seconds)
    except (MlflowException, OSError) as err:
        if unsent is None:  # not an outage of the tracking server at the end: a real error
            raise
        raise tracking.TrackingUnavailable(
            f"MLflow at {uri} stopped answering before run {result.run_id} logged its fronts, metrics and models "
            f"({type(err).__name__}); nothing of them was logged, they are kept in {unsent}; start the server and "
            "run the same config again (caches and checkpoints make it quick) to log them") from None
    return result


def _run_methods(cfg: ExperimentConfig, models: recorder.StageModels, grid: np.ndarray, progress: bool) -> dict:
    """Every enabled method trained and evaluated: one Ray task per method (per λ for a per-weight baseline), the
    PPO methods on their own Ray actors meanwhile. -> {"<method>" or "<method>/<i>": the stage's output}."""
    cfg_ref = ray.put(cfg)
    method = recorder.remote(stages.method_stage, cfg)
    base_ref, rm_ref = ray.put(models.base), ray.put(models.reward)
    pending = {}
    for name, mcfg in cfg.methods.enabled().items():
        if name in PPO_METHODS:
            continue  # PPO methods train on their own Ray actors (below), not as one task
        if mcfg.per_weight:
            for i, w in enumerate(np.asarray(getattr(mcfg, "weights", None) or grid)):
                pending[f"{name}/{i}"] = method.remote(cfg_ref, name, base_ref, rm_ref, weights=w.tolist(),
                                                       seed_offset=i)
        else:
            pending[name] = method.remote(cfg_ref, name, base_ref, rm_ref, grid=grid.tolist())
    ppo_outputs: dict = {}
    for name in (m for m in cfg.methods.enabled() if m in PPO_METHODS):  # while the tasks above run
        from pareto.distributed.ppo import run_ppo_method

        ppo_outputs.update(run_ppo_method(cfg, name, models.base, models.reward, grid, progress))
    outputs = recorder.gather(pending, "methods", progress)
    outputs.update(ppo_outputs)
    return outputs


def _log_fronts(cfg: ExperimentConfig, outputs: dict, models: recorder.StageModels, result: PipelineResult,
                uri: str) -> None:
    """Every method's fronts (by every scorer), the plots, the run's summary metrics and the registry entries."""
    oracle = recorder.task_oracle(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        for name in cfg.methods.enabled():
            runs = [outputs[k] for k in sorted(outputs, key=_order) if k.split("/")[0] == name]
            fronts = recorder.log_method(name, runs, cfg, oracle[1] if oracle else None, models.base_point,
                                         Path(tmp))
            result.fronts_by_scorer[name] = fronts
            result.fronts[name] = fronts[recorder.main_scorer(cfg, list(fronts))]
    recorder.log_plots(list(result.fronts.values()), oracle)
    for name, front in result.fronts.items():
        mlflow.log_metrics({f"{name}/hypervolume": front.metrics["hypervolume"],
                            f"{name}/igd": front.metrics.get("igd", float("nan"))})
    if cfg.tracking.registry:  # the non-dominated models (and each conditioned model) into the Model Registry
        from pareto import registry

        result.registered = registry.register_fronts(result.fronts.values(), experiment=cfg.experiment_name,
                                                     source_run_id=result.run_id, tracking_uri=uri)


def _order(key: str) -> tuple[str, int]:
    name, _, index = key.partition("/")
    return name, int(index or 0)
