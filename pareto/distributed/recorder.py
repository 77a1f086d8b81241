"""The run recorder: the one public API the drivers (pipeline, sweep, PPO) use to run stages on Ray, fetch or
build the cached stage artefacts (base model, reward model, the base model's own point), build fronts and log them
to MLflow. Drivers never reach into each other's privates; they call these functions.

Caches live under `<state>/cache/<stage>-<digest>/`, keyed by everything that makes the artefact (`pareto.cache`:
config sections, stage version, pareto's source, library versions; the key is written beside it as key.json), and
are written atomically with a DONE marker: a killed stage leaves nothing that looks finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import ray
from tqdm.auto import tqdm

from pareto import tracking
from pareto.cache import KEY_FILE, cache_dir, cache_key
from pareto.config import ExperimentConfig
from pareto.data.task import build_task
from pareto.distributed import stages
from pareto.distributed.bundle import ModelRef, pack, unpack
from pareto.evaluation import PointEval
from pareto.front.plot import plot_front_html, plot_front_png
from pareto.front.types import Front, FrontPoint
from pareto.io import atomic_write_text, folder_bytes

_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# resources.cpu_kernels: portable. Each library picks its x86 code path from the CPU it runs on (AVX-512 and AMX on
# a recent Xeon, other paths on an EPYC), and the paths round differently: two machines then train different fronts
# from one seed. ATen's dispatch and oneDNN are capped at AVX2; MKL's GEMM runs its COMPATIBLE reproducibility
# branch, the only one MKL honours on AMD as on Intel (MKL_CBWR=AVX2 is ignored on AMD: measured, docs/fronts.md).
# Read when torch loads: a fresh worker process gets them.
_PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "DNNL_MAX_CPU_ISA": "AVX2"}


def worker_env(offline: bool | None = None, cpu_kernels: str = "portable") -> dict[str, str]:
    """Environment of every Ray worker: one thread per CPU share; offline only when the config
    (`resources.offline`) or the driver's environment says so (workers of a cluster with the network download hub
    models and datasets); CPU kernels pinned to the portable paths unless `resources.cpu_kernels` is native."""
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    return _WORKER_ENV | (_OFFLINE if offline else {}) | (_PORTABLE_KERNELS if cpu_kernels == "portable" else {})


def init_ray(cfg: ExperimentConfig) -> None:
    """Join the configured cluster, the one in $RAY_ADDRESS (ray job submit), or start a local one."""
    if ray.is_initialized():
        return
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env(cfg.resources.offline, cfg.resources.cpu_kernels)}
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


def remote(fn, cfg: ExperimentConfig):
    """`fn` as a Ray task with the config's CPU and GPU share per task."""
    return ray.remote(num_cpus=cfg.resources.cpus_per_task, num_gpus=cfg.resources.gpus_per_task,
                      max_retries=1)(fn)


def gather(pending: dict, desc: str, progress: bool) -> dict:
    """Wait for Ray tasks as they finish, with a progress bar; a failed stage fails the driver loudly."""
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


def keep_unsent(outputs: dict, folder: Path) -> Path:
    """What a run could not log (the tracking server went away): every method task's output (points, history,
    timings) as JSON and its adapter as a folder, under `folder`. A rerun of the same config logs it all from the
    caches and checkpoints; this copy is for reading meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, out in outputs.items():
        name = key.replace("/", "-")
        adapter = out.get("adapter")
        if adapter is not None:
            unpack(adapter, folder / f"{name}-adapter")
        (folder / f"{name}.json").write_text(json.dumps({k: v for k, v in out.items() if k != "adapter"},
                                                        default=float), encoding="utf-8")
    return folder


class RewardModelTooWeak(RuntimeError):
    """The reward model's held-out accuracy is under `reward_model.min_accuracy` (one line: which, and the fix)."""


def run_tags(cfg: ExperimentConfig, kind: str, methods: str) -> dict[str, str]:
    """The tags of a driver's top-level run (a pipeline's or a sweep's): what the UI and `pareto compare` list by."""
    return {tracking.PIPELINE_TAG: kind, "pareto.task": cfg.task.name, "pareto.objectives": ",".join(cfg.objectives),
            "pareto.methods": methods}


# ---- stage caches --------------------------------------------------------------------------------------------------
def cached(path: Path) -> Path | None:
    return path if (path / "DONE").is_file() else None


def store(path: Path, bundle: ModelRef, extra: dict[str, object] | None = None) -> Path:
    """Persist a stage's output as a finished cache entry, with `extra` JSON files beside it."""
    files = {name: json.dumps(value, indent=2, default=float).encode() for name, value in (extra or {}).items()}
    if isinstance(bundle, str) and Path(bundle).resolve() == path.resolve():  # the stage wrote it in place
        for name, data in {**files, "DONE": b"ok"}.items():
            (path / name).write_bytes(data)
        return path
    unpack({**(pack(bundle) if isinstance(bundle, str) else bundle), **files, "DONE": b"ok"}, path)
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def cached_json(path: Path, build: Callable[[], dict]) -> dict:
    """A small stage artefact kept as one JSON file: built once and written atomically (a run killed mid-write must
    not leave a truncated file that every resume then fails to parse), then read back."""
    if not path.is_file():
        atomic_write_text(path, json.dumps(build()))
    return json.loads(path.read_text())


def model_ref(path: Path | str, cfg: ExperimentConfig) -> ModelRef:
    """How a model folder reaches the workers: bytes when small, its path (shared state folder) when large."""
    if isinstance(path, str) and not Path(path).is_dir():
        return path  # a hub id: every worker loads it itself
    path = Path(path)
    if folder_bytes(path) <= cfg.resources.by_value_max_bytes:
        return {k: v for k, v in pack(path).items() if k != "DONE"}
    return str(path.resolve())


def log_model(path: Path | str, artifact: str, cfg: ExperimentConfig) -> None:
    """A model served from the run: its files when small, else a SOURCE.json saying where it is (a hub id, a
    GGUF file's cached folder): multi-GB weights are not copied into every run's artifacts."""
    if isinstance(path, str) and not Path(path).is_dir() or folder_bytes(path) > cfg.resources.by_value_max_bytes:
        mlflow.log_dict({"base": cfg.model.base, "path": str(path)}, f"{artifact}/SOURCE.json")
    else:
        tracking.log_dir(Path(path), artifact)


# ---- the base and reward models, and the base model's own point ----------------------------------------------------
@dataclass
class StageModels:
    """What every method trains from and is scored by, fetched from the cache or built as Ray tasks."""

    base: ModelRef                  # the base policy (bytes or a folder / hub id by reference)
    reward: ModelRef                # the reward model, with the normaliser every front is scored with
    base_point: PointEval           # the base model's own scores on the eval prompts (every scorer)
    accuracy: dict[str, float] = field(default_factory=dict)
    task: dict = field(default_factory=dict)  # the task's description: pairs, prompts, rows skipped / truncated


def stage_models(cfg: ExperimentConfig, progress: bool = True, log_models: bool = True) -> StageModels:
    """Build (as Ray tasks) or fetch the base model, the reward model and the base point; log each as a nested run
    of the active MLflow run, and the models served from the run as its artifacts. Raises when the reward model's
    held-out accuracy is under `reward_model.min_accuracy`."""
    base_dir, rm_dir, eval_dir = (cache_dir(cfg, s) for s in ("base", "reward", "base_eval"))
    needs_base = cfg.model.base == "tiny" or cfg.model.needs_sft
    pending = {}
    if needs_base and cached(base_dir) is None:
        pending["sft"] = remote(stages.sft_stage, cfg).remote(cfg, str(base_dir))
    if cached(rm_dir) is None:
        pending["reward_model"] = remote(stages.reward_stage, cfg).remote(cfg)
    outputs = gather(pending, "base & reward models", progress)
    base_path = _log_sft(cfg, outputs.get("sft"), base_dir, needs_base)
    accuracy = _log_reward_model(cfg, outputs.get("reward_model"), rm_dir)
    too_low = {k: round(v, 4) for k, v in accuracy.items() if v < cfg.reward_model.min_accuracy}
    if too_low:
        raise RewardModelTooWeak(f"reward model held-out accuracy {too_low} is below reward_model.min_accuracy="
                                 f"{cfg.reward_model.min_accuracy}; train longer (reward_model.epochs), add data, or "
                                 "lower the gate for noisy human labels")
    base = model_ref(base_path, cfg)
    point, task = _log_base_eval(cfg, base, pack(rm_dir), eval_dir, progress)
    if log_models:  # the models a front is served from travel with the run: the UI and `pareto query` work anywhere
        log_model(base_path, "base_model", cfg)
        tracking.log_dir(eval_dir / "reward", "reward_model")
    return StageModels(base, pack(eval_dir / "reward"), point, accuracy, task)


def _log_sft(cfg: ExperimentConfig, out: dict | None, base_dir: Path, needs_base: bool) -> Path | str:
    """The "sft" nested run: the base model just trained (`out`, stored in the cache) or fetched (None); -> where
    the base model is (its cache folder, or the configured model's source when it is not trained here)."""
    with mlflow.start_run(run_name="sft", nested=True):
        if out is not None:
            store(base_dir, out["bundle"], {KEY_FILE: cache_key(cfg, "base")})
            tracking.log_history([{"step": i + 1, "sft_loss": v} for i, v in enumerate(out["losses"])])
            mlflow.log_metrics({"sft_seconds": out["seconds"], "parameters": out["parameters"]})
        base_path: Path | str = base_dir if needs_base else stages.base_source(cfg)
        mlflow.set_tags({"cache": "hit" if out is None else "miss", "path": str(base_path),
                         "sft": str(cfg.model.needs_sft)})
    return base_path


def _log_reward_model(cfg: ExperimentConfig, out: dict | None, rm_dir: Path) -> dict[str, float]:
    """The "reward_model" nested run: the reward model just trained (`out`, stored) or fetched (None); -> its
    held-out accuracy per objective."""
    with mlflow.start_run(run_name="reward_model", nested=True):
        if out is not None:
            report = {k: out[k] for k in ("accuracy", "normalizer", "train_pairs", "held_out_pairs", "seconds")}
            store(rm_dir, out["bundle"], {KEY_FILE: cache_key(cfg, "reward"), "report.json": report})
        report = read_json(rm_dir / "report.json")
        mlflow.log_metrics({f"heldout_accuracy/{k}": v for k, v in report["accuracy"].items()})
        mlflow.log_metrics({k: report[k] for k in ("train_pairs", "held_out_pairs", "seconds") if k in report})
        mlflow.set_tags({"cache": "hit" if out is None else "miss"})
    return report["accuracy"]


def _log_base_eval(cfg: ExperimentConfig, base: ModelRef, reward: ModelRef, eval_dir: Path,
                   progress: bool) -> tuple[PointEval, dict]:
    """The "base_eval" nested run: the base model's own point, scored (a Ray task) or fetched; -> (point, task)."""
    with mlflow.start_run(run_name="base_eval", nested=True):
        hit = cached(eval_dir) is not None
        if not hit:
            out = gather({"base_eval": remote(stages.base_eval_stage, cfg).remote(cfg, base, reward)},
                         "base model's point", progress)["base_eval"]
            store(eval_dir, {f"reward/{k}": v for k, v in (out["reward_bundle"] or reward).items() if k != "DONE"},
                  {KEY_FILE: cache_key(cfg, "base_eval"), "point.json": out["point"],
                   "normalizer.json": out["normalizer"], "task.json": out["task"],
                   "seconds.json": {"seconds": out["seconds"]}})
        point = PointEval.from_dict(read_json(eval_dir / "point.json"))
        task = read_json(eval_dir / "task.json")
        mlflow.set_tags({"cache": "hit" if hit else "miss", "normalize_on": stages.normalize_on(cfg)})
        if (eval_dir / "seconds.json").is_file():
            mlflow.log_metric("seconds", read_json(eval_dir / "seconds.json")["seconds"])
        mlflow.log_dict(read_json(eval_dir / "normalizer.json"), "normalizer_stats.json")
        mlflow.log_metrics(scorer_metrics(cfg, point))
        mlflow.log_metrics({f"data/{k}": v for k, v in task.get("stats", {}).items()})
        mlflow.log_dict({"point": point.to_dict(), "task": task}, "base_point.json")
    return point, task


# ---- a trained model's run -----------------------------------------------------------------------------------------
def scorer_metrics(cfg: ExperimentConfig, point: PointEval) -> dict[str, float]:
    """A point's mean scores as metrics: "<scorer>/<objective>"."""
    return {f"{scorer}/{o}": v for scorer, means in point.mean.items()
            for o, v in zip(cfg.objectives, means, strict=True)}


def training_metrics(out: dict) -> dict[str, float]:
    """What every trained model's run logs of its training (a method stage's or a sweep trial's output)."""
    return {"best_step": out["best_step"], "steps": out["steps"], "train_seconds": out["train_seconds"],
            "eval_seconds": out["eval_seconds"], "tokens_per_second": out["tokens_per_second"]}


def log_model_artifacts(out: dict, model_meta: dict, folder: Path) -> None:
    """A trained model's artifacts in the active run: its adapter (unpacked into `folder`), what it is
    (model_meta.json) and its evaluation (evaluation.json)."""
    tracking.log_dir(unpack(out["adapter"], folder), "adapter")
    mlflow.log_dict(model_meta, "model_meta.json")
    mlflow.log_dict({"points": out["points"]}, "evaluation.json")


# ---- fronts ---------------------------------------------------------------------------------------------------------
def task_oracle(cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The task's true front (weights, values) on the eval prompts, None for a task without an oracle."""
    return stages.oracle_front(build_task(cfg), cfg, n_prompts=cfg.evaluation.n_prompts)


def base_front_point(point: PointEval, scorer: str) -> FrontPoint:
    return FrontPoint(weights=(), values=tuple(point.mean[scorer]), stderr=tuple(point.stderr[scorer]),
                      extra=point_extra(point, scorer))


def point_extra(point: PointEval, scorer: str) -> dict:
    """What a front point keeps of its evaluation besides the means: fluency, and the per-prompt scores that
    paired standard errors need."""
    extra = {"repetition_rate": point.repetition_rate, "mean_words": point.mean_words, "empty_rate": point.empty_rate}
    if scorer in point.scores:
        extra["scores"] = point.scores[scorer]
    return extra


def make_front(cfg: ExperimentConfig, method: str, points: list[FrontPoint], scorer: str, meta: dict,
               base_point: PointEval | None) -> Front:
    """A method's front by one scorer, with the base model's point and the reference point the config gives
    (a dataset's 'base' reference is derived from the base point: logged in the front's meta)."""
    base = base_front_point(base_point, scorer) if base_point is not None and scorer in base_point.mean else None
    reference = cfg.front_reference(scorer, list(base.values) if base is not None else None)
    meta = {**meta, "reference_rule": "base - reference_margin" if cfg.evaluation.reference_point == "base"
            and scorer != "oracle" else "config"}
    return Front(method=method, objectives=tuple(cfg.objectives), points=tuple(points),
                 reference_point=tuple(reference), scorer=scorer, meta=meta, base_point=base)


def scored_fronts(cfg: ExperimentConfig, method: str, points: dict[str, list[FrontPoint]], meta: dict,
                  base_point: PointEval | None, oracle_values: np.ndarray | None) -> dict[str, Front]:
    """A method's front by every scorer ({scorer: its points}), with its metrics (IGD to the oracle front for the
    oracle scorer). -> {scorer: Front}."""
    fronts = {}
    for scorer, fps in points.items():
        front = make_front(cfg, method, fps, scorer, meta, base_point)
        front.compute_metrics(oracle_front=oracle_values if scorer == "oracle" else None)
        fronts[scorer] = front
    return fronts


def scorer_names(points: list[PointEval]) -> list[str]:
    """The scorers every point was scored by, oracle first (the main front of the embedded task)."""
    names = set.intersection(*(set(p.mean) for p in points)) if points else set()
    return [s for s in ("oracle", "reward_model") if s in names]


def main_scorer(cfg: ExperimentConfig, scorers: list[str]) -> str:
    return cfg.evaluation.scorer if cfg.evaluation.scorer in scorers else scorers[-1]


def log_main_front(cfg: ExperimentConfig, method: str, fronts: dict[str, Front]) -> Front:
    """The method's front by the run's main scorer as fronts/<method>.json of the active run (what the UI, the
    registry and `pareto compare` read). -> that front."""
    main = fronts[main_scorer(cfg, list(fronts))]
    mlflow.log_text(main.to_json(), f"fronts/{method}.json")
    return main


def log_plots(fronts: list[Front], oracle: tuple[np.ndarray, np.ndarray] | None) -> None:
    """The run's front plots (PNG + interactive HTML), with the oracle front when the task has one."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plot_front_png(fronts, tmp / "front.png", oracle_front=oracle)
        plot_front_html(fronts, tmp / "front.html", oracle_front=oracle)
        mlflow.log_artifact(str(tmp / "front.png"), "plots")
        mlflow.log_artifact(str(tmp / "front.html"), "plots")
    if oracle is not None:
        mlflow.log_dict({"weights": oracle[0].tolist(), "values": oracle[1].tolist()}, "oracle/front.json")


def log_method(name: str, runs: list[dict], cfg: ExperimentConfig, oracle_values: np.ndarray | None,
               base_point: PointEval | None, tmp: Path) -> dict[str, Front]:
    """One nested run per method (and per λ for per-weight models); the method's fronts, by every scorer, as
    artifacts. -> {scorer: Front}."""
    points: list[PointEval] = []
    uris: dict = {}
    with mlflow.start_run(run_name=name, nested=True) as mrun:
        mlflow.set_tag("method", name)
        train_seconds = sum(r["train_seconds"] for r in runs)
        for i, out in enumerate(runs):
            run_id, run_points = _log_method_run(name, out, cfg, len(runs), tmp / f"{name}-{i}")
            points += run_points
            uris.update({point.weights: f"runs:/{run_id}/adapter" for point in run_points})
        meta = {"run_id": mrun.info.run_id, "train_seconds": train_seconds,
                "models_trained": sum(r.get("models_trained", 1) for r in runs),  # Soups: K adapters in one run
                "conditioned": not getattr(cfg.methods, name).per_weight}
        if runs[0].get("policy_kind"):
            meta["policy_kind"] = runs[0]["policy_kind"]  # how serving loads the model (models.conditioned)
        by_scorer = {scorer: [FrontPoint(weights=p.weights, values=p.mean[scorer], stderr=p.stderr[scorer],
                                         model_uri=uris.get(p.weights, ""), extra=point_extra(p, scorer))
                              for p in points]
                     for scorer in scorer_names(points)}
        fronts = scored_fronts(cfg, name, by_scorer, meta, base_point, oracle_values)
        for scorer, front in fronts.items():
            mlflow.log_metrics({f"{scorer}/{k}": float(v) for k, v in front.metrics.items()
                                if isinstance(v, int | float)})
            mlflow.log_text(front.to_json(), f"fronts/{name}.{scorer}.json")
        mlflow.log_metrics({"train_seconds_total": train_seconds,
                            "repetition_rate": float(np.mean([p.repetition_rate for p in points])),
                            "empty_rate": float(np.mean([p.empty_rate for p in points]))})
    log_main_front(cfg, name, fronts)
    return fronts


def _log_method_run(name: str, out: dict, cfg: ExperimentConfig, n_runs: int,
                    folder: Path) -> tuple[str, list[PointEval]]:
    """One trained model's nested run (the method's only one, or one per λ); -> (its run id, its points)."""
    label = name if n_runs == 1 else f"{name} λ={np.round(out['weights'], 3).tolist()}"
    points = [PointEval.from_dict(p) for p in out["points"]]
    with mlflow.start_run(run_name=label, nested=True) as run:
        mlflow.set_tag("method", name)
        if out["weights"] is not None:
            mlflow.log_param("weights", out["weights"])
        tracking.log_history(out["history"])
        mlflow.log_metrics({**training_metrics(out), "train_wall_seconds": out.get("train_wall_seconds", 0.0)})
        if out.get("peak_memory_gib"):
            mlflow.log_metric("peak_memory_gib", out["peak_memory_gib"])
        if out.get("resumed_from"):  # a rerun after a kill: training went on from this checkpoint step
            mlflow.log_metric("resumed_from_step", out["resumed_from"])
        if len(points) == 1:
            mlflow.log_metrics(scorer_metrics(cfg, points[0]))
        log_model_artifacts(out, {"method": name, "objectives": list(cfg.objectives), "weights": out["weights"],
                                  "base_model": cfg.model.base}, folder)
    return run.info.run_id, points
