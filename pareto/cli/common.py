"""What every `pareto` command shares: the one-line user error, config loading with --set, the state folder and
the MLflow tracking URI."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from pareto.config import ConfigError, ExperimentConfig, load_config

SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set a.b=value")]
StateDirOption = Annotated[Path | None, typer.Option("--state-dir", help="the state folder (default: $PARETO_HOME "
                                                                         "or .pareto)")]


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def user_errors() -> tuple[type[Exception], ...]:
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


def load(config: Path, overrides: list[str] | None) -> ExperimentConfig:
    """The validated config, or a one-line error and exit 2."""
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        fail(str(err))
        raise  # unreachable


def tracking_uri_for(tracking_uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the local store in $PARETO_HOME or .pareto."""
    from pareto import tracking

    return tracking.tracking_uri(tracking_uri, Path(os.environ.get("PARETO_HOME", ".pareto")).resolve())


def state_dir_for(state_dir: Path | None) -> Path:
    return (state_dir or Path(os.environ.get("PARETO_HOME") or ".pareto")).resolve()
