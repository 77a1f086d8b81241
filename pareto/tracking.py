"""MLflow: where runs go, how a pipeline logs, and how runs and fronts are found again.

Tracking URI: the config's, else $MLFLOW_TRACKING_URI, else a SQLite store in the state folder (artifacts
next to it), so nothing lands in the current directory by accident.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pareto.front.types import Front
from pareto.io import ensure_writable_dir

PIPELINE_TAG = "pareto.kind"
DRIVER_TAG = "pareto.driver"   # host:pid of the process that runs a pipeline or sweep (to tell a dead one)
FAILURE_TAG = "pareto.failure"  # why a run ended FAILED, in one line


def driver_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _driver_alive(driver: str) -> bool | None:
    """Whether the driver `host:pid` still runs: None when it ran on another host (this one cannot tell)."""
    import socket

    host, _, pid = driver.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descends(run: Run, root: str, by_id: dict[str, Run]) -> bool:
    """Whether `run` is nested (at any depth) under run `root`, following parentRunId tags through `by_id`."""
    parent = run.data.tags.get("mlflow.parentRunId")
    while parent:
        if parent == root:
            return True
        parent = by_id[parent].data.tags.get("mlflow.parentRunId") if parent in by_id else None
    return False


def fail_dead_runs(uri: str, experiment_id: str, successor: str) -> list[str]:
    """Mark FAILED, with the reason, every RUNNING run of the experiment whose driver died on this host (killed,
    out of memory, the machine rebooted), and its RUNNING nested runs: no run stays RUNNING forever. `successor`
    is the run that picks the work up (from the caches and the trainers' checkpoints). -> the runs failed."""
    client = MlflowClient(uri)
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    by_id = {r.info.run_id: r for r in running}
    dead = [r for r in running if r.info.run_id != successor and r.data.tags.get(DRIVER_TAG)
            and _driver_alive(r.data.tags[DRIVER_TAG]) is False]
    failed = []
    for run in dead:
        reason = (f"the driver {run.data.tags[DRIVER_TAG]} died before the run finished; run {successor} took the "
                  "work up from the stage caches and trainer checkpoints")
        family = [run] + [r for r in running if _descends(r, run.info.run_id, by_id)]
        for member in family:
            client.set_tag(member.info.run_id, FAILURE_TAG, reason)
            client.set_terminated(member.info.run_id, status="FAILED")
            failed.append(member.info.run_id)
    return failed


def tracking_uri(uri: str | None, state_dir: Path) -> str:
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    ensure_writable_dir(state_dir)  # a one-line StateDirError (read-only, full, a file in the way), not a traceback
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
    run = mlflow.active_run()
    if run is None:
        for step, metrics in batch.items():
            mlflow.log_metrics(metrics, step=step)
        return
    # Through MetricBuffer: a server outage queues the series and flushes it when the server returns (bounded wait).
    buffer = MetricBuffer(run.info.run_id, mlflow.get_tracking_uri())
    for step, metrics in batch.items():
        buffer.log(metrics, step=step)
    buffer.flush()


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


def _search_kinds(client: MlflowClient, experiment_ids: list[str], kinds: tuple[str, ...]) -> list[Run]:
    runs = [r for kind in kinds for r in client.search_runs(
        experiment_ids, filter_string=f"tags.`{PIPELINE_TAG}` = '{kind}'", max_results=1000)]
    return sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)


def list_experiments(uri: str, kinds: tuple[str, ...] = ("pipeline",)) -> list:
    """The MLflow experiments that hold at least one pareto run of these kinds (tag pareto.kind: "pipeline",
    "sweep"), most recently active first."""
    client = MlflowClient(uri)
    experiments = {e.experiment_id: e for e in client.search_experiments()}
    if not experiments:
        return []
    ordered = dict.fromkeys(r.info.experiment_id for r in _search_kinds(client, list(experiments), kinds))
    return [experiments[i] for i in ordered]  # first seen = newest run


def list_pipeline_runs(uri: str, experiment_id: str, kinds: tuple[str, ...] = ("pipeline",)) -> list[Run]:
    """Top-level pareto runs of one experiment (tag pareto.kind in `kinds`), newest first; nested stage and
    trial runs are left out."""
    return _search_kinds(MlflowClient(uri), [experiment_id], kinds)


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


# ---- metrics survive a tracking-server outage: buffered, retried, flushed in order, or a clear failure ----------
class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable past the allowed wait; the message says how many metrics wait."""


def server_problem(uri: str) -> str | None:
    """Why the tracking server at `uri` does not answer `/health` within 2 s, or None when it does (a local store,
    sqlite or files, always answers). Asked before sending, so MLflow's own retry loop never blocks a caller."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=2) as reply:
            return None if reply.status == 200 else f"{uri}/health: HTTP {reply.status}"
    except OSError as exc:
        return f"{uri}/health: {exc}"[:160]


class MetricBuffer:
    """Log metrics of one run so that an outage never drops them silently.

    Each `log` queues the metrics and tries to send everything queued. A tracking server is asked `/health` first
    (2 s): while it does not answer, nothing is sent, so MLflow's own retry loop (minutes of backoff) never blocks
    a trainer, and nothing here touches `os.environ`. While the server is down the metrics stay queued; the next
    successful send flushes them all, in order, with their original timestamps and steps, each exactly once (a
    chunk leaves the queue only after MLflow acknowledged it). If the server has been unreachable for more than
    `max_wait` seconds, `log`/`flush` raise `TrackingUnavailable`, naming how many metrics are unsent and the
    JSON Lines file under `spool_dir` that holds them (the queue is kept too: a later flush still sends).
    """

    def __init__(self, run_id: str, uri: str, max_wait: float = 120.0, retry_every: float = 1.0,
                 spool_dir: Path | None = None) -> None:
        self.run_id, self.uri = run_id, uri
        self.max_wait, self.retry_every = max_wait, retry_every
        self.spool_dir = spool_dir or Path(tempfile.gettempdir()) / "pareto-unsent"
        self.pending: list = []  # mlflow.entities.Metric, oldest first
        self.down_since: float | None = None
        self.last_error = "no answer"
        self.client = MlflowClient(uri)

    def log(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, int(step)) for key, value in metrics.items()]
        if not self._try_send():
            self._raise_if_too_long()

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued, retrying for up to `timeout` s (default: what is left of `max_wait`)."""
        start = time.monotonic()
        limit = self.max_wait if timeout is None else timeout
        while not self._try_send():
            if time.monotonic() - start >= limit:
                self._raise(time.monotonic() - start)
            time.sleep(self.retry_every)

    def _try_send(self) -> bool:
        from mlflow.exceptions import MlflowException

        if self.pending and (problem := server_problem(self.uri)) is not None:
            self.last_error = problem
            if self.down_since is None:
                self.down_since = time.monotonic()
            return False
        try:
            while self.pending:
                chunk = self.pending[:1000]  # MLflow's log_batch limit
                self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
                del self.pending[:len(chunk)]
        except (MlflowException, OSError) as exc:
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.last_error = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            return False
        self.down_since = None
        return True

    def spill(self) -> Path:
        """Write the unsent metrics to `<spool_dir>/<run id>.jsonl` (key, value, timestamp, step per line)."""
        from pareto.io import atomic_write_text

        path = self.spool_dir / f"{self.run_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp,
                                                    "step": m.step}) + "\n" for m in self.pending))
        return path

    def _raise_if_too_long(self) -> None:
        if self.down_since is not None and time.monotonic() - self.down_since > self.max_wait:
            self._raise(time.monotonic() - self.down_since)

    def _raise(self, waited: float) -> None:
        raise TrackingUnavailable(
            f"MLflow at {self.uri} unreachable for {waited:.0f} s; {len(self.pending)} metrics of run {self.run_id} "
            f"are kept unsent in {self.spill()} ({self.last_error}); restart the server and flush again")
