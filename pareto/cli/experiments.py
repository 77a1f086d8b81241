"""Commands that run or check an experiment: `pareto run`, `quickstart`, `validate`, `sweep`, and the
`--config` parser of the `ray_jobs/` entry points."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from pareto.cli.common import SetOption, fail, load, user_errors
from pareto.config import ConfigError, ExperimentConfig, load_config
from pareto.report import summary

# Package data (pyproject.toml), so `pareto quickstart` works from a wheel too; configs/quickstart.yaml links here.
QUICKSTART = resources.files("pareto") / "configs" / "quickstart.yaml"


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


def run(config: Path, set_: SetOption = None) -> None:
    """Run the experiment described by CONFIG (a YAML file)."""
    cfg = load(config, set_)
    from pareto.distributed.pipeline import run_pipeline

    try:
        result = run_pipeline(cfg)
    except user_errors() as err:
        fail(str(err))
    typer.echo(summary(result, cfg))


def quickstart(set_: SetOption = None) -> None:
    """The embedded default: tiny-hh, a tiny LM, Panacea vs the per-weight DPO baseline, on local Ray."""
    with resources.as_file(QUICKSTART) as path:
        run(path, set_)


def validate(
    config: Path,
    set_: SetOption = None,
    plan: Annotated[bool | None, typer.Option("--plan/--no-plan", help="print the resolved cluster plan (default: "
                                                                        "for real-scale recipes)")] = None,
) -> None:
    """Check CONFIG without any compute: schema, objectives, weights, reference point, resources."""
    cfg = load(config, set_)
    from pareto.front.grid import preference_grid
    from pareto.plan import PlanError, is_real_scale, reference_text, resolve_plan

    resolved = None
    if plan or (plan is None and is_real_scale(cfg)):
        try:  # models, dataset sizes, Ray placement and GPU memory, from configs on disk: nothing is downloaded
            resolved = resolve_plan(cfg)
        except PlanError as err:
            fail(f"plan: {err}")
    grid = preference_grid(cfg.k, n_points=cfg.evaluation.grid_points)
    methods = ", ".join(cfg.methods.enabled())
    typer.echo(f"ok: {cfg.name}: task {cfg.task.name}, objectives {cfg.objectives}, methods {methods}, "
               f"λ grid of {len(grid)} points, reference point {reference_text(cfg)}")
    if resolved is not None:
        typer.echo(resolved.render())


def sweep(config: Path, set_: SetOption = None) -> None:
    """Search λ and hyper-parameters (the config's `sweep:` section) on Ray; rerun the same command to resume."""
    cfg = load(config, set_)
    if cfg.sweep is None:
        fail(f"{config}: no sweep section; add one (see configs/sweep_quickstart.yaml)")
    from pareto.distributed.sweep import run_sweep
    from pareto.distributed.sweep import summary as sweep_summary

    typer.echo(sweep_summary(run_sweep(cfg), cfg))
