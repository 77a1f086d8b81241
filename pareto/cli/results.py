"""Commands that read tracked results back: `pareto front`, `query`, `compare` and `export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pareto.cli.common import fail, tracking_uri_for, user_errors


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
        uri = tracking_uri_for(tracking_uri)
        found = tracking.find_run(run_ref, uri, experiment)
        fronts = tracking.load_fronts(found, uri)
    except (LookupError, *user_errors()) as err:
        fail(str(err))
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



def query(
    experiment: Annotated[str, typer.Option(help="the experiment whose registered models answer")],
    weights: Annotated[str, typer.Option(help="preference λ, one weight per objective: 0.6,0.3,0.1")],
    prompt: Annotated[str, typer.Option(help="the prompt to answer")],
    scalarization: Annotated[str, typer.Option(help="linear or tchebycheff")] = "linear",
    method: Annotated[str | None, typer.Option(help="only consider this method's models")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="answer length; default: the run's "
                                                             "evaluation.max_new_tokens")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI")] = None,
) -> None:
    """Answer PROMPT with the registered model that serves λ best; print which model version and why."""
    from pareto import query as q
    from pareto.front.grid import parse_weights
    from pareto.registry import list_registered

    uri = tracking_uri_for(tracking_uri)
    try:
        models = list_registered(experiment, uri)
        if not models:
            raise LookupError(f"experiment {experiment!r} has no registered models yet")
        lam = parse_weights(weights, len(models[-1].objectives))
        out = q.answer(experiment, lam, prompt, uri, scalarization=scalarization, method=method,
                       max_new_tokens=max_new_tokens)
    except (LookupError, ValueError) as err:
        fail(str(err))
    c = out.choice
    if as_json:
        typer.echo(json.dumps({**c.to_dict(), "prompt": prompt, "answer": out.text}, indent=2))
        return
    typer.echo(f"model:  {c.label} ({c.model.method}, {'conditioned' if c.model.conditioned else 'per-weight'}) "
               f"— {c.model.uri}, adapter {c.model.model_uri}")
    typer.echo(f"why:    {c.reason}")
    typer.echo(f"answer: {out.text}")


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

    uri = tracking_uri_for(tracking_uri)
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
        fail(str(err))
    if len({f.objectives for _, f in fronts}) > 1:
        fail("runs: the fronts have different objectives "
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
        fail(f"--grid-points must be >= 2, got {grid_points}")
    try:
        manifest = export_run(run_ref, out, tracking_uri_for(tracking_uri), experiment=experiment, methods=method,
                              grid_points=grid_points, overwrite=overwrite, progress=True)
    except (LookupError, ValueError, FileExistsError, FileNotFoundError) as err:
        fail(str(err))
    for name, reason in manifest["not_exported"].items():
        typer.echo(f"not exported: {name}: {reason}")
    typer.echo(f"\n{len(manifest['adapters'])} adapters in {out} (max rank {manifest['max_lora_rank']}). Serve them "
               "with vLLM (its own venv: bash scripts/vllm_env.sh):")
    typer.echo("  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True $VLLM_PY -m vllm.entrypoints.openai.api_server "
               "--host 127.0.0.1 " + " ".join(manifest["vllm_server_args"]))
