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

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set a.b=value")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load(config: Path, overrides: list[str] | None) -> ExperimentConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        _fail(str(err))
        raise  # unreachable


def summary(result, cfg: ExperimentConfig) -> str:
    """The closing report of a pipeline run: fronts, where they are tracked, how to look at them."""
    lines = [f"pareto: {cfg.name} (seed {cfg.seed}) finished in {result.seconds:.0f} s",
             "reward model held-out accuracy: "
             + ", ".join(f"{k} {v:.3f}" for k, v in result.reward_accuracy.items()), ""]
    for name, front in result.fronts.items():
        lines += [f"== {name} ({front.meta.get('models_trained', '?')} model(s), "
                  f"{front.meta.get('train_seconds', 0):.0f} CPU-s of training) — oracle scores", front.table(), ""]
    lines += [f"MLflow run {result.run_id} in experiment {result.experiment!r} at {result.tracking_uri}",
              "  read it back:  pareto front latest --json",
              f"  MLflow UI:     mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1",
              "  explore it:    pareto ui      (then open http://127.0.0.1:8501)"]
    return "\n".join(lines)


@app.command()
def run(config: Path, set_: SetOption = None) -> None:
    """Run the experiment described by CONFIG (a YAML file)."""
    cfg = _load(config, set_)
    from pareto.distributed.pipeline import run_pipeline

    result = run_pipeline(cfg)
    typer.echo(summary(result, cfg))


@app.command()
def quickstart(set_: SetOption = None) -> None:
    """The embedded default: tiny-hh, a tiny LM, Panacea vs the per-weight DPO baseline, on local Ray."""
    run(QUICKSTART, set_)


@app.command()
def validate(config: Path, set_: SetOption = None) -> None:
    """Check CONFIG without any compute: schema, objectives, weights, reference point, resources."""
    cfg = _load(config, set_)
    from pareto.front.grid import preference_grid

    grid = preference_grid(cfg.k, n_points=cfg.evaluation.grid_points)
    methods = ", ".join(cfg.methods.enabled())
    typer.echo(f"ok: {cfg.name}: task {cfg.task.name}, objectives {cfg.objectives}, methods {methods}, "
               f"λ grid of {len(grid)} points, reference point {cfg.reference_point}")


@app.command()
def front(
    run_ref: Annotated[str, typer.Argument(metavar="RUN", help="an MLflow run id, or 'latest'")] = "latest",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    experiment: Annotated[str | None, typer.Option(help="restrict 'latest' to this experiment")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
) -> None:
    """Print the fronts a pipeline run logged: method, objectives, hypervolume, IGD and points."""
    from pareto import tracking

    uri = tracking.tracking_uri(tracking_uri, Path(os.environ.get("PARETO_HOME", ".pareto")).resolve())
    try:
        found = tracking.find_run(run_ref, uri, experiment)
        fronts = tracking.load_fronts(found, uri)
    except LookupError as err:
        _fail(str(err))
    if as_json:
        payload = {"run_id": found.info.run_id, "fronts": [
            {"method": f.method, "objectives": list(f.objectives), "scorer": f.scorer,
             "hypervolume": f.metrics.get("hypervolume"), "igd": f.metrics.get("igd"),
             "reference_point": list(f.reference_point), "metrics": f.metrics,
             "points": [p.to_dict() for p in f.points]} for f in fronts]}
        typer.echo(json.dumps(payload, indent=2))
    else:
        for f in fronts:
            typer.echo(f"== {f.method}\n{f.table()}\n")


@app.command()
def ui(port: int = 8501, host: str = "127.0.0.1") -> None:
    """Open the Streamlit front explorer (binds 127.0.0.1 unless told otherwise)."""
    app_path = Path(__file__).resolve().parent.parent / "ui" / "app.py"
    if not app_path.is_file():
        _fail(f"UI not found at {app_path}")
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", host,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    raise typer.Exit(subprocess.call(cmd))


if __name__ == "__main__":
    app()
