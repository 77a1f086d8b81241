"""MLflow: where runs go, how a pipeline logs, and how runs and fronts are found again.

Tracking URI: the config's, else $MLFLOW_TRACKING_URI, else a SQLite store in the state folder (artifacts
next to it), so nothing lands in the current directory by accident.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pareto.front.types import Front

PIPELINE_TAG = "pareto.kind"


def tracking_uri(uri: str | None, state_dir: Path) -> str:
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    state_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{state_dir / 'mlflow.db'}"


def setup(uri: str, experiment: str, state_dir: Path) -> str:
    """Point MLflow at `uri` and return the experiment id (created with a local artifact root if needed)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = (state_dir / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)  # nested runs inherit the active experiment, not the parent's
    return exp_id


def log_history(history: Iterable[dict], prefix: str = "") -> None:
    """Log a list of {"step": s, metric: value, ...} dicts as metric series."""
    batch: dict[int, dict[str, float]] = {}
    for row in history:
        step = int(row.get("step", 0))
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                batch.setdefault(step, {})[f"{prefix}{key}"] = float(value)
    for step, metrics in batch.items():
        mlflow.log_metrics(metrics, step=step)


def log_json(obj: object, artifact_file: str) -> None:
    mlflow.log_dict(obj, artifact_file)


def log_dir(path: Path, artifact_path: str) -> None:
    mlflow.log_artifacts(str(path), artifact_path)


def find_run(ref: str, uri: str, experiment: str | None = None) -> Run:
    """An MLflow run by id, or `latest`: the most recent pareto pipeline run (in `experiment` if given)."""
    client = MlflowClient(uri)
    if ref != "latest":
        try:
            return client.get_run(ref)
        except Exception:
            raise LookupError(f"no MLflow run {ref!r} at {uri}; pass a run id from `mlflow ui` or 'latest'") from None
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"no MLflow experiment {experiment!r} at {uri}; run `pareto quickstart` first")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, filter_string=f"tags.`{PIPELINE_TAG}` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=1) if exp_ids else []
    if not runs:
        raise LookupError(f"no pareto pipeline run at {uri}; run `pareto quickstart` first")
    return runs[0]


def load_fronts(run: Run, uri: str) -> list[Front]:
    """Every front a pipeline run logged (artifacts fronts/<method>.json)."""
    client = MlflowClient(uri)
    files = [f for f in client.list_artifacts(run.info.run_id, "fronts") if f.path.endswith(".json")]
    if not files:
        raise LookupError(f"run {run.info.run_id} has no front artifacts (fronts/*.json); was it a pipeline run "
                          "that finished?")
    fronts = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            local = client.download_artifacts(run.info.run_id, f.path, tmp)
            fronts.append(Front.from_json(Path(local).read_text()))
    return fronts


def list_experiments(uri: str) -> list:
    """The MLflow experiments that hold at least one pareto pipeline run, most recently active first."""
    client = MlflowClient(uri)
    experiments = {e.experiment_id: e for e in client.search_experiments()}
    if not experiments:
        return []
    runs = client.search_runs(list(experiments), filter_string=f"tags.`{PIPELINE_TAG}` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    ordered = dict.fromkeys(r.info.experiment_id for r in runs)  # first seen = newest run
    return [experiments[i] for i in ordered]


def list_pipeline_runs(uri: str, experiment_id: str) -> list[Run]:
    """Pipeline runs (tag pareto.kind=pipeline) of one experiment, newest first; nested stage runs are left out."""
    return MlflowClient(uri).search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = 'pipeline'",
                                         order_by=["attributes.start_time DESC"], max_results=1000)


def load_oracle_front(run_id: str, uri: str) -> tuple[list, list] | None:
    """The task's true front a pipeline run logged (artifact oracle/front.json) as (weights, values), or None."""
    client = MlflowClient(uri)
    if not any(f.path == "oracle/front.json" for f in client.list_artifacts(run_id, "oracle")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = json.loads(Path(client.download_artifacts(run_id, "oracle/front.json", tmp)).read_text())
    return data["weights"], data["values"]


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)
