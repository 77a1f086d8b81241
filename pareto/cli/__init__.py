"""`pareto`: run experiments, validate configs, read fronts back from MLflow, open the UI."""

from __future__ import annotations

import typer

from pareto.cli.common import SetOption, StateDirOption
from pareto.cli.experiments import QUICKSTART, job_config, quickstart, run, sweep, validate
from pareto.cli.results import compare, export, front, query
from pareto.cli.tools import bench, cache_clear, cache_list, model_get, ui
from pareto.report import summary  # ray_jobs/train.py imports it from here

__all__ = ["QUICKSTART", "SetOption", "StateDirOption", "app", "bench", "cache_app", "cache_clear", "cache_list",
           "compare", "export", "front", "job_config", "model_app", "model_get", "query", "quickstart", "run",
           "summary", "sweep", "ui", "validate"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# Registered here, in the order `pareto --help` lists them.
for command in (run, quickstart, validate, front, sweep, query, compare, export, bench, ui):
    app.command()(command)

model_app = typer.Typer(no_args_is_help=True, help="Base models: a Hugging Face id, a local folder or a GGUF file.")
app.add_typer(model_app, name="model")
model_app.command("get")(model_get)

cache_app = typer.Typer(no_args_is_help=True, help="Cached stage artefacts (base, reward model, base point), model "
                                                   "folders and trainer checkpoints under the state folder.")
app.add_typer(cache_app, name="cache")
cache_app.command("list")(cache_list)
cache_app.command("clear")(cache_clear)
