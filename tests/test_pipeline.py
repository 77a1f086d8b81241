"""The pipeline end to end: a `ray job submit` to a real Ray head, tracked by a real MLflow server, read back
with `mlflow.search_runs`; and the same seed run again locally gives the same front."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pareto.config import load_config
from pareto.front.metrics import hypervolume
from pareto.front.types import Front
from tests.conftest import ROOT, _exe, shared_stage_caches

SMALL = ROOT / "tests" / "configs" / "small.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job_run(ray_head: dict, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Submit the small pipeline as a Ray job; return the parent MLflow run."""
    state = tmp_path_factory.mktemp("job-state")
    cmd = [_exe("ray"), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(ROOT), "--",
           "python", "ray_jobs/train.py", "--config", "tests/configs/small.yaml",
           "--set", f"tracking.uri={mlflow_server}", "--set", f"state_dir={state}"]
    # the base and reward models may come from another run of this config; the local run that
    # test_same_seed_gives_the_same_front_locally compares with (test_ui's small store) builds its own
    with shared_stage_caches(state, tmp_path_factory):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hypervolume=" in proc.stdout and "pareto front latest --json" in proc.stdout
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["test-small"], filter_string="tags.`pareto.kind` = 'pipeline'",
                              output_format="list", order_by=["attributes.start_time DESC"])
    return {"parent": runs[0], "uri": mlflow_server, "stdout": proc.stdout}


@pytest.fixture(autouse=True)
def _tracking(mlflow_server: str) -> None:
    mlflow.set_tracking_uri(mlflow_server)


def test_runs_are_nested_and_complete(job_run: dict) -> None:
    parent = job_run["parent"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["methods.panacea.max_steps"] == "100"  # params are the flattened config
    children = mlflow.search_runs(experiment_names=["test-small"],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  output_format="list")
    names = {r.info.run_name for r in children}
    assert {"sft", "reward_model", "panacea", "per_weight_dpo"} <= names
    rm = next(r for r in children if r.info.run_name == "reward_model")
    assert all(rm.data.metrics[f"heldout_accuracy/{o}"] >= 0.8 for o in ("helpful", "concise"))
    pw = next(r for r in children if r.info.run_name == "per_weight_dpo")
    per_lambda = mlflow.search_runs(experiment_names=["test-small"],
                                    filter_string=f"tags.mlflow.parentRunId = '{pw.info.run_id}'",
                                    output_format="list")
    assert len(per_lambda) == 3  # one model per λ of the 3-point grid
    pan = next(r for r in children if r.info.run_name == "panacea")
    pan_run = mlflow.search_runs(experiment_names=["test-small"],
                                 filter_string=f"tags.mlflow.parentRunId = '{pan.info.run_id}'", output_format="list")
    history = MlflowClient().get_metric_history(pan_run[0].info.run_id, "loss")
    assert len(history) >= 25 and all(np.isfinite(m.value) for m in history)
    assert pan_run[0].data.metrics["tokens_per_second"] > 0


def test_front_artifacts_match_logged_metrics(job_run: dict, tmp_path: Path) -> None:
    parent = job_run["parent"]
    client = MlflowClient()
    for method in ("panacea", "per_weight_dpo"):
        path = client.download_artifacts(parent.info.run_id, f"fronts/{method}.json", str(tmp_path))
        front = Front.from_json(Path(path).read_text())
        assert front.objectives == ("helpful", "concise") and len(front.points) == 3
        hv = hypervolume(front.values(), front.reference_point)
        assert parent.data.metrics[f"{method}/hypervolume"] == pytest.approx(hv, abs=1e-9)
        assert all(p.model_uri.startswith("runs:/") for p in front.points)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/front.png", "plots/front.html"} <= arts


def test_cli_front_json_reads_the_run_back(job_run: dict) -> None:
    proc = subprocess.run([_exe("pareto"), "front", "latest", "--json", "--tracking-uri", job_run["uri"],
                           "--experiment", "test-small"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["run_id"] == job_run["parent"].info.run_id
    methods = {f["method"]: f for f in data["fronts"]}
    assert set(methods) == {"panacea", "per_weight_dpo"}
    for f in methods.values():
        assert f["objectives"] == ["helpful", "concise"]
        assert f["hypervolume"] >= 0 and f["igd"] >= 0 and len(f["points"]) == 3


def test_same_seed_gives_the_same_front_locally(job_run: dict, tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    """A fresh local run (`pareto run` with its own local Ray, every stage built anew: the UI tests' store)
    reproduces the cluster job's front exactly."""
    from tests.test_ui import small_store, small_store_fronts

    local = small_store_fronts(small_store(tmp_path_factory))
    client = MlflowClient(job_run["uri"])
    assert set(local) == {"panacea", "per_weight_dpo"}
    for method, front in local.items():
        path = client.download_artifacts(job_run["parent"].info.run_id, f"fronts/{method}.json", str(tmp_path))
        remote = Front.from_json(Path(path).read_text())
        np.testing.assert_array_equal(front.values(), remote.values())
        np.testing.assert_array_equal(front.stderr(), remote.stderr())


def test_workers_run_the_portable_cpu_kernels() -> None:
    """`resources.cpu_kernels: portable` (the default): a Ray worker of a run uses ATen's AVX2 kernels and MKL's
    vendor-neutral reproducibility branch even on a CPU with AVX-512, so another AVX2 machine, Intel or AMD, computes
    the same front."""
    import ray

    from pareto.distributed.pipeline import init_ray

    if "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("not an AVX2 machine")

    @ray.remote
    def kernels() -> tuple[str, str | None]:
        import os

        import torch
        return torch.backends.cpu.get_cpu_capability(), os.environ.get("MKL_CBWR")

    if not ray.is_initialized():
        init_ray(load_config(SMALL))
    assert ray.get(kernels.remote()) == ("AVX2", "COMPATIBLE")
