"""The quickstart pipeline on Ray: base model and reward model, methods, fronts; everything tracked in MLflow.

Stages run as Ray tasks (a local Ray when no cluster address is given, the cluster under `ray job submit`);
the driver owns MLflow logging and the caches, so workers need no shared filesystem.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Before Ray is imported: keep every Ray listener on loopback and the job CLI usable without tokens.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import ray  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pareto import tracking  # noqa: E402
from pareto.config import PPO_METHODS, ExperimentConfig, dump_config  # noqa: E402
from pareto.data import load_task  # noqa: E402
from pareto.distributed import stages  # noqa: E402
from pareto.distributed.bundle import Bundle, pack, unpack  # noqa: E402
from pareto.evaluation import PointEval  # noqa: E402
from pareto.front.grid import preference_grid  # noqa: E402
from pareto.front.metrics import Z_REFERENCE  # noqa: E402
from pareto.front.plot import plot_front_html, plot_front_png  # noqa: E402
from pareto.front.types import Front, FrontPoint  # noqa: E402

WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
              "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass
class PipelineResult:
    run_id: str
    tracking_uri: str
    experiment: str
    fronts: dict[str, Front] = field(default_factory=dict)
    reward_accuracy: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    registered: list = field(default_factory=list)  # registry.RegisteredModel of the non-dominated models


def init_ray(cfg: ExperimentConfig) -> None:
    """Join the configured cluster, the one in $RAY_ADDRESS (ray job submit), or start a local one."""
    if ray.is_initialized():
        return
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # "local" starts a private cluster even if another one runs on this machine: explicit beats implicit.
        ray.init(address="local", num_cpus=cfg.resources.num_cpus, include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=True)
    needed = cfg.resources.cpus_per_task
    total = ray.cluster_resources().get("CPU", 0)
    if total < needed:
        raise RuntimeError(f"resources.cpus_per_task={needed} but the Ray cluster has {total} CPUs; lower it")


def _remote(fn, cfg: ExperimentConfig):
    return ray.remote(num_cpus=cfg.resources.cpus_per_task, num_gpus=cfg.resources.gpus_per_task,
                      max_retries=1)(fn)


def _cached(cache_dir: Path) -> Bundle | None:
    return pack(cache_dir) if (cache_dir / "DONE").is_file() else None


def _store(cache_dir: Path, bundle: Bundle) -> None:
    unpack({**bundle, "DONE": b"ok"}, cache_dir)


def eval_grid(cfg: ExperimentConfig) -> np.ndarray:
    return preference_grid(cfg.k, n_points=cfg.evaluation.grid_points)


def base_cache_dir(cfg: ExperimentConfig) -> Path:
    """Where the SFT base model is cached: keyed by what makes it (sweeps share it with runs)."""
    return cfg.state_path() / "cache" / f"base-{cfg.digest('seed', 'task', 'model')}"


def reward_cache_dir(cfg: ExperimentConfig) -> Path:
    return cfg.state_path() / "cache" / f"reward-{cfg.digest('seed', 'task', 'objectives', 'reward_model')}"


def _front(method: str, cfg: ExperimentConfig, points: list[PointEval], scorer: str, meta: dict) -> Front:
    fps = tuple(FrontPoint(weights=p.weights, values=p.mean[scorer], stderr=p.stderr[scorer],
                           model_uri=meta.get("model_uris", {}).get(p.weights, ""),
                           extra={"repetition_rate": p.repetition_rate, "mean_words": p.mean_words})
                for p in points)
    reference = cfg.reference_point if scorer == "oracle" else [Z_REFERENCE] * cfg.k
    return Front(method=method, objectives=tuple(cfg.objectives), points=fps, reference_point=tuple(reference),
                 scorer=scorer, meta={k: v for k, v in meta.items() if k != "model_uris"})


def run_pipeline(cfg: ExperimentConfig, progress: bool = True) -> PipelineResult:
    start = time.perf_counter()
    state = stages.preflight(cfg)
    uri = tracking.tracking_uri(cfg.tracking.uri, state)
    exp_id = tracking.setup(uri, cfg.experiment_name, state)
    init_ray(cfg)
    task = load_task(cfg.task.name, seed=cfg.seed)
    grid = eval_grid(cfg)
    cfg_ref = ray.put(cfg)
    sft, rm, method = (_remote(f, cfg) for f in (stages.sft_stage, stages.reward_stage, stages.method_stage))

    with mlflow.start_run(experiment_id=exp_id, run_name=f"{cfg.name}-seed{cfg.seed}") as parent:
        mlflow.set_tags({tracking.PIPELINE_TAG: "pipeline", "pareto.task": cfg.task.name,
                         "pareto.objectives": ",".join(cfg.objectives),
                         "pareto.methods": ",".join(cfg.methods.enabled())})
        mlflow.log_params(cfg.flat())
        mlflow.log_text(dump_config(cfg), "config/resolved.yaml")
        result = PipelineResult(parent.info.run_id, uri, cfg.experiment_name)

        # ---- stage 1: base model and reward model, in parallel, each cached by the hash of what makes it ------
        base_dir = state / "cache" / f"base-{cfg.digest('seed', 'task', 'model')}"
        rm_dir = state / "cache" / f"reward-{cfg.digest('seed', 'task', 'objectives', 'reward_model')}"
        base, reward = _cached(base_dir), _cached(rm_dir)
        pending = {}
        if base is None:
            pending["sft"] = sft.remote(cfg_ref)
        if reward is None:
            pending["reward_model"] = rm.remote(cfg_ref)
        outputs = _gather(pending, "base & reward models", progress)
        with mlflow.start_run(run_name="sft", nested=True):
            if "sft" in outputs:
                out = outputs["sft"]
                _store(base_dir, out["bundle"])
                tracking.log_history([{"step": i + 1, "sft_loss": v} for i, v in enumerate(out["losses"])])
                mlflow.log_metrics({"sft_seconds": out["seconds"], "parameters": out["parameters"]})
            mlflow.set_tags({"cache": "hit" if "sft" not in outputs else "miss", "path": str(base_dir)})
        with mlflow.start_run(run_name="reward_model", nested=True):
            if "reward_model" in outputs:
                out = outputs["reward_model"]
                _store(rm_dir, {**out["bundle"], "report.json": tracking.dump_json(
                    {"accuracy": out["accuracy"], "normalizer": out["normalizer"]}).encode()})
            report = _read_json(rm_dir / "report.json")
            result.reward_accuracy = report["accuracy"]
            mlflow.log_metrics({f"heldout_accuracy/{k}": v for k, v in report["accuracy"].items()})
            mlflow.log_dict(report["normalizer"], "normalizer_stats.json")
            mlflow.set_tags({"cache": "hit" if "reward_model" not in outputs else "miss"})
        too_low = {k: v for k, v in report["accuracy"].items() if v < cfg.reward_model.min_accuracy}
        if too_low:
            raise RuntimeError(f"reward model held-out accuracy {too_low} is below reward_model.min_accuracy="
                               f"{cfg.reward_model.min_accuracy}; train longer (reward_model.epochs) or add data")
        # The models a front is served from travel with the run, so the UI and `pareto query` work anywhere.
        tracking.log_dir(base_dir, "base_model")
        tracking.log_dir(rm_dir, "reward_model")
        base_ref, rm_ref = ray.put(_cached(base_dir)), ray.put(_cached(rm_dir))

        # ---- stage 2: methods (the per-weight baseline fans out one task per λ) ------------------------------
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

            ppo_outputs.update(run_ppo_method(cfg, name, _cached(base_dir), _cached(rm_dir), grid, progress))
        outputs = _gather(pending, "methods", progress)
        outputs.update(ppo_outputs)

        # ---- stage 3: fronts, metrics, artifacts ---------------------------------------------------------------
        oracle_w, oracle_v = stages.oracle_front(task, cfg, n_prompts=cfg.evaluation.n_prompts)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for name in cfg.methods.enabled():
                runs = [outputs[k] for k in sorted(outputs, key=_order) if k.split("/")[0] == name]
                fronts = _log_method(name, runs, cfg, oracle_v, tmp)
                result.fronts[name] = fronts["oracle"]
            fronts = list(result.fronts.values())
            mlflow.log_dict({"weights": oracle_w.tolist(), "values": oracle_v.tolist()}, "oracle/front.json")
            plot_front_png(fronts, tmp / "front.png", oracle_front=(oracle_w, oracle_v))
            plot_front_html(fronts, tmp / "front.html", oracle_front=(oracle_w, oracle_v))
            mlflow.log_artifact(str(tmp / "front.png"), "plots")
            mlflow.log_artifact(str(tmp / "front.html"), "plots")
            for name, front in result.fronts.items():
                mlflow.log_metrics({f"{name}/hypervolume": front.metrics["hypervolume"],
                                    f"{name}/igd": front.metrics.get("igd", float("nan"))})
        if cfg.tracking.registry:  # the non-dominated models (and each conditioned model) into the Model Registry
            from pareto import registry

            result.registered = registry.register_fronts(result.fronts.values(), experiment=cfg.experiment_name,
                                                         source_run_id=parent.info.run_id, tracking_uri=uri)
        result.seconds = time.perf_counter() - start
        mlflow.log_metric("pipeline_seconds", result.seconds)
    return result


def _order(key: str) -> tuple[str, int]:
    name, _, index = key.partition("/")
    return name, int(index or 0)


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _gather(pending: dict, desc: str, progress: bool) -> dict:
    """Wait for Ray tasks as they finish, with a progress bar; a failed stage fails the pipeline loudly."""
    outputs: dict = {}
    names = {ref: name for name, ref in pending.items()}
    remaining = list(names)
    bar = tqdm(total=len(remaining), desc=desc, unit="task", disable=not progress or not remaining)
    while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        for ref in done:
            outputs[names[ref]] = ray.get(ref)
            bar.update(1)
            bar.set_postfix_str(names[ref])
    bar.close()
    return outputs


def _log_method(name: str, runs: list[dict], cfg: ExperimentConfig, oracle_values: np.ndarray,
                tmp: Path) -> dict[str, Front]:
    """One nested run per method (and per λ for per-weight models); the method's fronts as artifacts."""
    points: list[PointEval] = []
    uris: dict = {}
    with mlflow.start_run(run_name=name, nested=True) as mrun:
        mlflow.set_tag("method", name)
        train_seconds = sum(r["train_seconds"] for r in runs)
        for i, out in enumerate(runs):
            label = name if len(runs) == 1 else f"{name} λ={np.round(out['weights'], 3).tolist()}"
            with mlflow.start_run(run_name=label, nested=True) as run:
                mlflow.set_tag("method", name)
                if out["weights"] is not None:
                    mlflow.log_param("weights", out["weights"])
                tracking.log_history(out["history"])
                mlflow.log_metrics({"best_step": out["best_step"], "steps": out["steps"],
                                    "train_seconds": out["train_seconds"], "eval_seconds": out["eval_seconds"],
                                    "tokens_per_second": out["tokens_per_second"]})
                adapter_dir = unpack(out["adapter"], tmp / f"{name}-{i}")
                tracking.log_dir(adapter_dir, "adapter")
                mlflow.log_dict({"method": name, "objectives": list(cfg.objectives), "weights": out["weights"],
                                 "base_model": cfg.model.base}, "model_meta.json")
                for p in out["points"]:
                    point = PointEval.from_dict(p)
                    points.append(point)
                    uris[point.weights] = f"runs:/{run.info.run_id}/adapter"
                    mlflow.log_metrics({f"oracle/{o}": v for o, v in zip(cfg.objectives, point.mean["oracle"],
                                                                         strict=True)} if len(out["points"]) == 1
                                       else {})
                mlflow.log_dict({"points": out["points"]}, "evaluation.json")
        meta = {"run_id": mrun.info.run_id, "train_seconds": train_seconds,
                "models_trained": sum(r.get("models_trained", 1) for r in runs),  # Soups: K adapters in one run
                "conditioned": not getattr(cfg.methods, name).per_weight, "model_uris": uris}
        if runs[0].get("policy_kind"):
            meta["policy_kind"] = runs[0]["policy_kind"]  # how serving loads the model (models.conditioned)
        fronts = {}
        for scorer in ("oracle", "reward_model"):
            front = _front(name, cfg, points, scorer, meta)
            front.compute_metrics(oracle_front=oracle_values if scorer == "oracle" else None)
            fronts[scorer] = front
            mlflow.log_metrics({f"{scorer}/{k}": float(v) for k, v in front.metrics.items()
                                if isinstance(v, int | float)})
            mlflow.log_text(front.to_json(), f"fronts/{name}.{scorer}.json")
        mlflow.log_metrics({"train_seconds_total": train_seconds,
                            "repetition_rate": float(np.mean([p.repetition_rate for p in points]))})
    mlflow.log_text(fronts["oracle"].to_json(), f"fronts/{name}.json")
    return fronts
