"""What the explorer reads from MLflow, cached per process.

`served_run` is a `st.cache_resource`: one `ServedRun` per (run, tracking URI) per process, and the
`ServedRun` keeps each loaded model, so moving λ on a conditioned model never reloads it. Listings are
`st.cache_data` with a short TTL so a run that just finished shows up on the next interaction.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from pareto import tracking
from pareto.front.types import Front
from pareto.serving import ServedRun

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
KINDS = ("pipeline", "sweep")  # top-level runs that log fronts/*.json and the models behind them


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    name: str
    status: str
    started: str
    methods: str
    objectives: str
    kind: str = "pipeline"

    @property
    def label(self) -> str:
        kind = "" if self.kind == "pipeline" else f"{self.kind} · "
        status = "" if self.status == "FINISHED" else f" ({self.status.lower()})"
        return f"{kind}{self.name} · {self.started} · {self.run_id[:8]}{status}"


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the local store the pipeline writes by default ($PARETO_HOME or .pareto)."""
    return tracking.tracking_uri(None, Path(os.environ.get("PARETO_HOME", ".pareto")).resolve())


@st.cache_data(ttl=15, show_spinner=False)
def experiments(uri: str) -> list[tuple[str, str]]:
    """(id, name) of the experiments holding pareto pipeline runs or sweeps."""
    return [(e.experiment_id, e.name) for e in tracking.list_experiments(uri, KINDS)]


@st.cache_data(ttl=15, show_spinner=False)
def runs(uri: str, experiment_id: str) -> list[RunInfo]:
    import datetime as dt

    out = []
    for r in tracking.list_pipeline_runs(uri, experiment_id, KINDS):
        started = dt.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        out.append(RunInfo(r.info.run_id, r.info.run_name or r.info.run_id[:8], r.info.status, started,
                           r.data.tags.get("pareto.methods", ""), r.data.tags.get("pareto.objectives", ""),
                           r.data.tags.get(tracking.PIPELINE_TAG, "pipeline")))
    return out


@st.cache_resource(show_spinner="Reading the run's fronts from MLflow…")
def served_run(run_id: str, uri: str) -> ServedRun:
    return ServedRun(run_id, uri)


@st.cache_resource
def model_lock(run_id: str, uri: str) -> threading.Lock:
    """Sessions share one model per run; λ is written into it in place, so answers are taken one at a time."""
    return threading.Lock()


@st.cache_data(show_spinner=False)
def fronts(run_id: str, uri: str) -> list[Front]:
    return tracking.load_fronts(tracking.find_run(run_id, uri), uri)


@st.cache_data(show_spinner=False)
def oracle_front(run_id: str, uri: str) -> list | None:
    """The oracle front's values (M, K) of a run, or None when the run logged none."""
    found = tracking.load_oracle_front(run_id, uri)
    return None if found is None else found[1]
