"""Every DPO-family trainer survives a real kill: SIGKILL mid-run, run again, and it resumes from its newest
checkpoint and ends bit-identical (parameters, history, front) to a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, checkpoint_steps

METHODS = ["panacea", "per_weight_dpo", "mah_dpo", "soups", "modpo", "ric"]
KILL_AFTER = {"ric": 2}  # checkpoint step to wait for before the kill: RiC's are phases (offline pass, rounds)


def _start(method: str, base: Path, ckpt: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.trainer_run", method, str(base), str(ckpt), str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("method", METHODS)
def test_a_killed_trainer_resumes_bit_identical(method: str, tiny_lm: Path, tmp_path: Path) -> None:
    whole = _finish(_start(method, tiny_lm, tmp_path / "whole", tmp_path / "whole.json"), tmp_path / "whole.json")
    after = KILL_AFTER.get(method, 10)
    assert whole["resumed_from"] == 0 and whole["steps"] > 10
    # keep_checkpoints=2: each trainer folder holds only its newest two
    for folder in {p.parent for p in (tmp_path / "whole").rglob("step-*")}:
        assert len(list(folder.glob("step-*"))) == 2

    ckpt, out = tmp_path / "killed", tmp_path / "killed.json"
    proc = _start(method, tiny_lm, ckpt, out)
    deadline = time.time() + 600
    while not [s for s in checkpoint_steps(ckpt) if s >= after] and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill: no exception handler, no atexit, maybe mid-write
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists(), "the trainer finished before it was killed"

    again = _finish(_start(method, tiny_lm, ckpt, out), out)
    assert again["resumed_from"] >= after
    assert not list(ckpt.rglob(".step-*.tmp"))  # a half-written checkpoint of the killed run: never read, cleared
    for key in ("parameters", "steps", "best_step", "front", "history"):
        assert again[key] == whole[key], key


def test_a_killed_pipeline_resumes_and_fails_the_dead_run(ray_head: dict, tmp_path: Path,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """`pareto run` on a real Ray head, killed twice: between stages (as soon as the base and reward models and the
    base point are cached), then, run again, inside the Panacea stage (after its first checkpoint). The third run
    takes the finished stages from the cache and Panacea from its checkpoint, both dead runs are FAILED with the
    reason, and the front is bit-identical to an uninterrupted run of the same config (tests/test_ui's small run,
    in another state folder)."""
    from mlflow.tracking import MlflowClient

    from pareto import tracking
    from tests.test_ui import SMALL, small_store

    reference = small_store(tmp_path_factory)
    state, uri = tmp_path / "state", f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [str(Path(sys.executable).parent / "pareto"), "run", str(SMALL), "--set", f"state_dir={state}",
           "--set", f"tracking.uri={uri}", "--set", "methods.panacea.checkpoint_every=20"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "RAY_ADDRESS": ray_head["address"]}

    def between_stages() -> bool:
        return bool(list((state / "cache").glob("base_eval-*/DONE")))

    def inside_panacea() -> bool:
        return any(checkpoint_steps(folder) for folder in (state / "checkpoints").glob("panacea-*"))

    for reached in (between_stages, inside_panacea):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 900
        while not reached() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # a real kill of the driver: no handler runs
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the pipeline finished before it was killed ({reached.__name__})"
        time.sleep(3)  # the head notices the dead driver and ends its job's tasks

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    client = MlflowClient(uri)
    new = tracking.find_run("latest", uri)
    pipelines = client.search_runs([new.info.experiment_id], f"tags.{tracking.PIPELINE_TAG} = 'pipeline'")
    dead = [r for r in pipelines if r.info.run_id != new.info.run_id]
    assert len(dead) == 2 and new.info.status == "FINISHED"
    for run in dead:
        assert run.info.status == "FAILED" and "died before the run finished" in run.data.tags[tracking.FAILURE_TAG]
    assert not client.search_runs([new.info.experiment_id], "attributes.status = 'RUNNING'")
    children = client.search_runs([new.info.experiment_id], f"tags.mlflow.parentRunId = '{new.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert {by_name[n].data.tags["cache"] for n in ("sft", "reward_model", "base_eval")} == {"hit"}
    panacea = client.search_runs([new.info.experiment_id],
                                 f"tags.mlflow.parentRunId = '{by_name['panacea'].info.run_id}'")
    assert panacea[0].data.metrics["resumed_from_step"] >= 20
    fronts = {f.method: f for f in tracking.load_fronts(new, uri)}
    expected = {f.method: f for f in tracking.load_fronts(tracking.find_run(reference["run_id"], reference["uri"]),
                                                          reference["uri"])}
    for method, front in expected.items():
        assert fronts[method].values().tolist() == front.values().tolist(), method
