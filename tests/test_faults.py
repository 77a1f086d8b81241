"""Faults: a tracking server that goes away, a state folder that cannot be written, a kill in the middle of a save.

The MLflow server here is a real `mlflow server` process that the test stops and starts again on the same port and
store (its own function-scoped fixture: the session server of conftest stays up for the other tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _exe, checkpoint_steps, free_port, shared_stage_caches, wait_http

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


def test_metrics_survive_a_tracking_server_outage(restartable_mlflow: RestartableServer, tmp_path: Path) -> None:
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
    impatient = MetricBuffer(run_id, server.url, max_wait=0, retry_every=0.1, spool_dir=tmp_path / "unsent")
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"unreachable .* 1 metrics of run .* kept unsent in .*unsent"):
        impatient.log({"acc": 0.5}, step=7)
    assert time.monotonic() - started < 30  # one /health probe, not MLflow's minutes of retries
    spilled = [json.loads(line) for line in (tmp_path / "unsent" / f"{run_id}.jsonl").read_text().splitlines()]
    assert [(m["key"], m["value"], m["step"]) for m in spilled] == [("acc", 0.5, 7)]
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


def test_a_tracking_outage_mid_run_keeps_the_outputs_and_a_rerun_logs_each_step_once(
        restartable_mlflow: RestartableServer, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`pareto run` against a real MLflow server that is stopped while the methods train and does not come back:
    the run ends with one line saying nothing of its fronts was logged and where they are on disk. The server
    starts again; the same command logs everything from the caches and checkpoints, every metric step exactly once,
    and the dead run is FAILED with the reason."""
    from mlflow.tracking import MlflowClient

    from pareto import tracking

    server, state = restartable_mlflow, tmp_path / "state"
    cmd = [_exe("pareto"), "run", str(Path(__file__).parent / "configs" / "small.yaml"), "--set",
           f"state_dir={state}", "--set", f"tracking.uri={server.url}", "--set", "methods.per_weight_dpo=null",
           "--set", "methods.panacea.max_steps=40", "--set", "methods.panacea.checkpoint_every=10"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PARETO_HOME")}
    # MLflow's own retry loop (minutes of backoff) is the grace period a real run gets; the test does not wait it
    quick = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    with shared_stage_caches(state, tmp_path_factory):
        proc = subprocess.Popen(cmd, env=quick, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 900
        while not checkpoint_steps(state / "checkpoints") and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        server.stop()
        _, err = proc.communicate(timeout=900)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, err[-3000:]
    assert "stopped answering before run" in lines[0] and "nothing of them was logged" in lines[0]
    unsent = Path(lines[0].split("kept in ")[1].split(";")[0])
    assert unsent.parent == state / "unsent" and (unsent / "panacea.json").is_file()
    assert json.loads((unsent / "panacea.json").read_text())["points"] and (unsent / "panacea-adapter").is_dir()

    server.start()  # same port, same store
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    client = MlflowClient(server.url)
    new = tracking.find_run("latest", server.url)
    experiment = new.info.experiment_id
    dead = [r for r in client.search_runs([experiment], f"tags.{tracking.PIPELINE_TAG} = 'pipeline'")
            if r.info.run_id != new.info.run_id]
    assert len(dead) == 1 and dead[0].info.status == "FAILED" and new.info.status == "FINISHED"
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    runs = client.search_runs([experiment], max_results=1000)
    logged = 0
    for run in runs:
        if run.info.run_id == dead[0].info.run_id or run.data.tags.get("mlflow.parentRunId") == dead[0].info.run_id:
            continue
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key, steps)  # each step exactly once
            logged += len(steps)
    assert logged > 50
    assert {f.method for f in tracking.load_fronts(new, server.url)} == {"panacea"}


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


# ---- disk full, file-size limit, read-only filesystem, permissions: real OS errors in a child process ------------
# The child makes a previous good copy, snapshots the folder, turns the fault on, tries the save through the real
# writer, and snapshots again. Faults are real kernel errors: RLIMIT_FSIZE with SIGXFSZ ignored (EFBIG), a 64 KiB
# tmpfs in a private mount namespace (ENOSPC; remounted read-only: EROFS), and a read-only folder with the
# DAC-override capabilities dropped, so that it fails for root too (EACCES; CI runs as root).
WRITE_CHILD = textwrap.dedent("""
    import hashlib, json, os, resource, signal, subprocess, sys
    from pathlib import Path

    target, kind, fault = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    folder = target.parent
    if fault in ("enospc", "erofs"):  # we are root of our own user + mount namespace: a private, tiny tmpfs
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True)

    from pareto import io
    from pareto.io import StateDirError

    def save():  # the writer under test, with new content far over every limit below
        if kind == "file":
            io.atomic_write_bytes(target, b"NEW" * 400_000)
        elif kind == "front":
            front.save(target)
        elif kind == "checkpoint":
            save_model(model, tokenizer, target)
        elif kind == "cache":  # what the pipeline's cache store does with a stage's bundle
            unpack({"model.safetensors": b"N" * 1_200_000, "DONE": b"ok"}, target)
        elif kind == "state":
            io.ensure_writable_dir(target)

    # build every payload before the fault: only the save itself may meet it
    if kind == "front":
        from pareto.front.types import Front, FrontPoint
        front = Front("m", ("a", "b"), tuple(FrontPoint((i / 4999, 1 - i / 4999), (float(i), -float(i)), (0.0, 0.0))
                                             for i in range(5000)), (-1.0, -1.0))
    elif kind == "checkpoint":
        from pareto.config import TinyModelConfig
        from pareto.models.policy import build_tiny_model, save_model, train_tokenizer
        tokenizer = train_tokenizer(["User: hello there\\nAssistant: general kenobi"] * 20, 300)
        model = build_tiny_model(TinyModelConfig(hidden_size=64, intermediate_size=64, num_heads=1, vocab_size=300),
                                 tokenizer, 0)
    elif kind == "cache":
        from pareto.distributed.bundle import unpack

    # the previous good copy
    if kind in ("file", "front"):
        io.atomic_write_bytes(target, b"OLD")
    elif kind in ("checkpoint", "cache"):
        with io.atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"OLD")
            (tmp / "DONE").write_bytes(b"ok")

    def snapshot():
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
                for p in sorted(folder.rglob("*"))}  # hidden temporaries included

    before = snapshot()
    if fault == "efbig":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of failing the write
        limit = 0 if kind == "state" else 16384  # the state folder's write probe is 2 bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    elif fault == "erofs":
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    elif fault == "eacces":
        folder.chmod(0o555)
    try:
        save()
        error = None
    except StateDirError as exc:
        error = str(exc)
    finally:
        if fault == "eacces":
            folder.chmod(0o755)
    print(json.dumps({"error": error, "before": before, "after": snapshot()}))
""")

# (fault, words the fix must contain)
FAULTS = {"efbig": ("File too large", "file-size limit"), "enospc": ("No space left on device", "free disk space"),
          "erofs": ("Read-only file system", "read-only"), "eacces": ("Permission denied", "permissions")}
WRITE_FAULT_ROWS = [("efbig", "file"), ("efbig", "front"), ("efbig", "checkpoint"), ("efbig", "cache"),
                    ("efbig", "state"), ("enospc", "file"), ("enospc", "front"), ("enospc", "checkpoint"),
                    ("enospc", "cache"), ("erofs", "file"), ("erofs", "checkpoint"), ("eacces", "file"),
                    ("eacces", "front"), ("eacces", "cache")]


def _fault_prefix(fault: str, tmp_path: Path) -> list[str]:
    """The command prefix that lets the fault happen for real, or skip with why it cannot here."""
    if fault in ("enospc", "erofs"):
        probe = tmp_path / "mount-probe"
        probe.mkdir()
        ok = shutil.which("unshare") and subprocess.run(
            ["unshare", "-Urm", "mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(probe)],
            capture_output=True).returncode == 0
        probe.rmdir()
        if not ok:
            pytest.skip("a real full/read-only filesystem needs a private mount namespace (unshare -Urm), "
                        "which this machine does not allow")
        return ["unshare", "-Urm"]
    if fault == "eacces" and os.geteuid() == 0:  # root ignores file modes: drop the capabilities that allow it
        if not shutil.which("setpriv"):
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop CAP_DAC_OVERRIDE")
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    return []


@pytest.mark.parametrize(("fault", "kind"), WRITE_FAULT_ROWS, ids=[f"{f}-{k}" for f, k in WRITE_FAULT_ROWS])
def test_refused_write_is_one_clear_error_and_keeps_the_previous_copy(tmp_path: Path, fault: str, kind: str) -> None:
    import json

    folder = tmp_path / "state"
    folder.mkdir()
    target = folder / {"file": "cache.bin", "front": "front.json", "checkpoint": "base", "cache": "base-0a1b",
                       "state": "state"}[kind]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # nothing but the save itself writes under the fault
    proc = subprocess.run([*_fault_prefix(fault, tmp_path), sys.executable, "-c", WRITE_CHILD, str(target), kind,
                           fault], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    reason, fix = FAULTS[fault]
    message = out["error"]
    assert message is not None, "the save succeeded: the fault did not happen"
    assert "\n" not in message and str(target) in message and reason in message and fix in message, message
    assert "PARETO_HOME" in message
    # the previous good copy is intact and no temporary is left: the folder is byte for byte what it was
    if kind == "state":
        assert out["after"].pop("state") == "dir"  # the folder itself may be made; the write probe is gone
    assert out["after"] == out["before"]
    if kind != "state":
        assert out["before"], "no previous copy was made"


def test_write_error_for_a_real_disk_full_error() -> None:
    """/dev/full fails every write with ENOSPC: the kernel's own error, turned into the one-line message."""
    from pareto.io import write_error

    with pytest.raises(OSError) as err, open("/dev/full", "wb", buffering=0) as full:
        full.write(b"x")
    message = str(write_error("/state/cache/base-1/model.safetensors", err.value))
    assert message.startswith("cannot write '/state/cache/base-1/model.safetensors' (No space left on device); "
                              "free disk space on that filesystem")
    assert "\n" not in message and "PARETO_HOME" in message and "unchanged" in message


def test_a_bug_inside_an_atomic_dir_keeps_its_type(tmp_path: Path) -> None:
    """Only refused writes are turned into StateDirError; other errors (bugs, bad values) pass through unchanged."""
    with pytest.raises(KeyError), atomic_dir(tmp_path / "ckpt"):
        raise KeyError("bug")
    with pytest.raises(FileNotFoundError), atomic_dir(tmp_path / "ckpt"):
        open(tmp_path / "missing-input")  # noqa: SIM115 - a read error is not a write error
    assert list(tmp_path.iterdir()) == []


def test_actor_model_copies_of_dead_processes_are_removed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PPO actor killed with SIGKILL cannot delete its unpacked model copy; the next unpack removes the copies of
    processes that are gone (a real exited child's pid) and keeps the live ones'."""
    from pareto.distributed.ppo import common

    monkeypatch.setattr(common, "UNPACK_ROOT", tmp_path)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{int(child.stdout)}-base-x"
    alive = tmp_path / f"{os.getppid()}-base-y"  # our parent is running
    for d in (dead, alive):
        (d / "base").mkdir(parents=True)
    path = common.unpack_tmp({"config.json": b"{}"}, "base")
    assert (path / "config.json").read_bytes() == b"{}" and path.parent.name.startswith(f"{os.getpid()}-base-")
    assert not dead.exists() and alive.exists()
