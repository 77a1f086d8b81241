"""Faults: a tracking server that goes away, a state folder that cannot be written, a kill in the middle of a save.

The MLflow server here is a real `mlflow server` process that the test stops and starts again on the same port and
store (its own function-scoped fixture: the session server of conftest stays up for the other tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _exe, free_port, wait_http

from pareto.io import StateDirError, atomic_dir, atomic_write_bytes, ensure_writable_dir


class RestartableServer:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [_exe("mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/health", timeout=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the gunicorn/uvicorn workers go too
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture
def restartable_mlflow(tmp_path: Path) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_metrics_survive_a_tracking_server_outage(restartable_mlflow: RestartableServer) -> None:
    from mlflow.tracking import MlflowClient

    from pareto.tracking import MetricBuffer, TrackingUnavailable

    server = restartable_mlflow
    client = MlflowClient(server.url)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    buffer = MetricBuffer(run_id, server.url, max_wait=300, retry_every=0.5)
    buffer.log({"loss": 1.0}, step=0)
    assert buffer.pending == []  # sent straight away while the server is up

    server.stop()
    for step in (1, 2, 3):
        buffer.log({"loss": 1.0 - step / 10}, step=step)  # no exception: queued, the outage is within max_wait
    assert [m.step for m in buffer.pending] == [1, 2, 3]

    # A run that cannot wait fails clearly, naming what is unsent, and still keeps it.
    impatient = MetricBuffer(run_id, server.url, max_wait=0, retry_every=0.1)
    with pytest.raises(TrackingUnavailable, match=r"unreachable .* 1 metrics of run .* kept unsent"):
        impatient.log({"acc": 0.5}, step=7)
    with pytest.raises(TrackingUnavailable, match=r"2 metrics of run"):
        impatient.log({"acc": 0.6}, step=8)
    with pytest.raises(TrackingUnavailable):
        impatient.flush(timeout=0.5)
    assert [m.step for m in impatient.pending] == [7, 8]

    server.start()  # same port, same store
    buffer.flush(timeout=60)
    impatient.flush(timeout=60)
    assert buffer.pending == [] and impatient.pending == []
    history = MlflowClient(server.url).get_metric_history(run_id, "loss")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.7)]
    assert sorted((m.step, m.value) for m in MlflowClient(server.url).get_metric_history(run_id, "acc")) == [
        (7, 0.5), (8, 0.6)]


def test_log_history_goes_through_the_buffer(tmp_path: Path) -> None:
    """The pipeline's metric series (tracking.log_history) are sent with MetricBuffer: same values, in order."""
    import mlflow

    from pareto import tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking.setup(uri, "hist", tmp_path)
    with mlflow.start_run() as run:
        tracking.log_history([{"step": 0, "loss": 2.0}, {"step": 5, "loss": 1.5, "note": "x"}], prefix="dpo/")
    got = mlflow.tracking.MlflowClient(uri).get_metric_history(run.info.run_id, "dpo/loss")
    assert [(m.step, m.value) for m in got] == [(0, 2.0), (5, 1.5)]


# ---- the state folder -------------------------------------------------------------------------------------------
# Tests run as root, so chmod cannot make a folder read-only: a path under a regular file and /proc (a read-only
# kernel filesystem even for root) force the OS errors instead.
@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unwritable_state_folder_is_one_clear_error(tmp_path: Path, where: str) -> None:
    if where == "under-a-file":
        (tmp_path / "f").write_text("x")
        target = tmp_path / "f" / "state"
    else:
        target = Path("/proc/pareto-state")
    with pytest.raises(StateDirError) as err:
        ensure_writable_dir(target)
    message = str(err.value)
    assert "\n" not in message and str(target) in message and "PARETO_HOME" in message


def test_unwritable_state_folder_stops_a_run_before_compute(tmp_path: Path) -> None:
    """`pareto run` with an unwritable state_dir: exit 2, one line, and no Ray or MLflow started."""
    (tmp_path / "f").write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: t\nstate_dir: {tmp_path / 'f' / 'state'}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-m", "pareto.cli", "run", str(cfg)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: state folder" in proc.stderr and "not writable" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "f"]


# ---- atomic writes: SIGKILL in the middle of a save ----------------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from pareto import io

    target, kind = Path(sys.argv[1]), sys.argv[2]
    def stall(*_a):  # stop inside the save, after the new bytes are written, before the rename
        print("saving", flush=True)
        time.sleep(120)
    if kind == "file":
        os.fsync = stall
        io.atomic_write_bytes(target, b"NEW" * 100000)
    else:
        with io.atomic_dir(target) as tmp:
            (tmp / "weights.safetensors").write_bytes(b"NEW")
            stall()
            (tmp / "meta.json").write_text("{}")
""")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_kill_during_save_leaves_the_previous_good_copy(tmp_path: Path, kind: str) -> None:
    target = tmp_path / ("front.json" if kind == "file" else "checkpoint")
    if kind == "file":
        atomic_write_bytes(target, b"OLD")
    else:
        with atomic_dir(target) as tmp:
            (tmp / "weights.safetensors").write_bytes(b"OLD")
            (tmp / "meta.json").write_text('{"step": 1}')
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), kind], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saving"
    finally:
        child.kill()  # SIGKILL: no finally blocks, no cleanup
        child.wait()
    if kind == "file":
        assert target.read_bytes() == b"OLD"
    else:
        assert (target / "weights.safetensors").read_bytes() == b"OLD"
        assert (target / "meta.json").read_text() == '{"step": 1}'
    # What the kill left is a hidden temporary sibling, never the target name.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != target.name]
    assert leftovers and all(name.startswith(f".{target.name}.") for name in leftovers)
