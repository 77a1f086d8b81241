"""PPO on real Ray actors: versioned weight sync, bit-identical resume after a stop, recovery from a killed trainer
rank, and the `ray job submit` path with the run read back from a real MLflow server.

The in-process tests use a random-weight tiny LM and rule-based rewards (the task's oracle and a length rule), so
they need no SFT or reward-model training; the job test runs the real pipeline (SFT, learned reward model).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from pareto.config import config_from_dict
from pareto.data import load_task
from pareto.distributed.bundle import pack
from pareto.distributed.ppo import PPORun
from pareto.distributed.ppo.checkpoint import latest_checkpoint, load_checkpoint
from pareto.distributed.ppo.common import collate
from pareto.distributed.ppo.controller import compare_to_base
from pareto.distributed.ppo.group import NAMESPACE, ActorGroup, get_all
from pareto.distributed.recorder import worker_env
from pareto.models.policy import build_tiny_model, save_model, train_tokenizer
from tests.conftest import ROOT, _exe, shared_stage_caches
from tests.test_hf_reward import gpt2_rm  # noqa: F401 (fixture: a tiny GPT-2 reward model saved locally)

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_heads": 1, "vocab_size": 512}


def small_cfg(state: Path, method: str = "panacea_ppo", **method_over):
    mcfg = {"max_steps": 6, "prompts_per_step": 4, "samples_per_prompt": 2, "minibatches": 2, "ppo_epochs": 1,
            "max_new_tokens": 8, "lora_rank": 4, "kl_target": 1.0, **method_over}
    if method == "panacea_ppo":
        mcfg.setdefault("preferences_per_step", 2)
    return config_from_dict({
        "name": "ppo-test", "seed": 0, "objectives": ["helpful", "concise"], "model": {"tiny": TINY},
        "methods": {method: mcfg},
        "evaluation": {"grid_points": 2, "n_prompts": 4, "max_new_tokens": 8},
        "ppo": {"reward_sources": {"helpful": "oracle", "concise": "length"}, "checkpoint_every": 2,
                "trainer": {"count": 2, "cpus": 0.5}, "rollout": {"count": 1, "cpus": 0.5}},
        "state_dir": str(state),
    })


@pytest.fixture(scope="module")
def local_ray():
    ray.shutdown()  # a test that ran a pipeline in this process may have left its Ray connected
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": worker_env()},
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random-weight tiny Llama with a tokenizer trained on the task corpus, as a bundle."""
    task = load_task("tiny-hh")
    corpus = [f"User: {p}\nAssistant: {r}" for p, r in task.sft_examples()[:400]]
    tokenizer = train_tokenizer(corpus, TINY["vocab_size"])
    cfg = small_cfg(tmp_path_factory.mktemp("unused"))
    model = build_tiny_model(cfg.model.tiny, tokenizer, seed=0)
    path = tmp_path_factory.mktemp("base") / "model"
    save_model(model, tokenizer, path)
    return pack(path)


def grid(cfg) -> np.ndarray:
    from pareto.distributed.pipeline import eval_grid

    return eval_grid(cfg)


def run(cfg, base, root: Path, until_step: int | None = None, method: str = "panacea_ppo") -> dict:
    ppo = PPORun(cfg, method, base, None, grid(cfg), root=root, progress=False)
    try:
        return ppo.run(until_step)
    finally:
        ppo.close()


def final_state(root: Path, unit: int = 0) -> tuple[dict, dict]:
    return load_checkpoint(latest_checkpoint(root / f"unit-{unit}"))


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("timing/") and "per_second" not in k}
            for row in history]


def assert_same_state(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    (ta, sa), (tb, sb) = a, b
    assert sa["step"] == sb["step"]
    assert ta.keys() == tb.keys() and {"policy", "critic", "optimizer", "rng"} <= ta.keys()
    for group in ta:
        assert ta[group].keys() == tb[group].keys(), group
        for key in ta[group]:
            assert torch.equal(ta[group][key], tb[group][key]), f"{group}/{key} differs"
    for key in ("version", "data", "reward_stats", "kl", "lambda_schedule", "trainer"):
        assert sa[key] == sb[key], key
    assert without_timing(sa["history"]) == without_timing(sb["history"])


@pytest.fixture(scope="module")
def uninterrupted(local_ray, base, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference: one Panacea-PPO run of 6 steps, never stopped."""
    state = tmp_path_factory.mktemp("ref")
    cfg = small_cfg(state)
    out = run(cfg, base, state / "A")
    return {"cfg": cfg, "root": state / "A", "out": out["panacea_ppo"]}


def test_an_actor_process_does_not_import_the_driver() -> None:
    """Every PPO actor is a new process that imports its class's module: the rollout engines, the reward and
    reference workers and the trainer ranks must not pull in the controller's MLflow and pipeline stages."""
    code = ("import sys, pareto.distributed.ppo.workers, pareto.distributed.ppo.trainer, "
            "pareto.distributed.ppo.transformers_engine, pareto.distributed.ppo.vllm_engine; "
            "bad = [m for m in ('mlflow', 'pareto.distributed.ppo.controller', 'pareto.distributed.stages', "
            "'pareto.distributed.recorder') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    from pareto.distributed.ppo import PPORun, run_ppo_method  # the driver's names still resolve, lazily

    assert PPORun.__module__ == run_ppo_method.__module__ == "pareto.distributed.ppo.controller"


def test_run_logs_every_step_phase_and_version(uninterrupted: dict) -> None:
    out = uninterrupted["out"]
    steps = [row["step"] for row in out["history"]]
    assert steps == [1, 2, 3, 4, 5, 6]
    # rollouts record the version they used: one weight sync per step, version v at step v+1
    assert [row["version"] for row in out["history"]] == [0, 1, 2, 3, 4, 5] and out["final_version"] == 6
    for row in out["history"]:
        for phase in ("generation", "reward", "reference", "experience", "training", "sync", "step"):
            assert row[f"timing/{phase}"] > 0
        assert row["generation_tokens_per_second"] > 0 and row["step_tokens_per_second"] > 0
        # the engine's log-probs of its own samples equal the trainer's at the same version: the sync is real
        assert row["rollout_logprob_diff"] < 1e-4
        assert {"reward/helpful", "reward/concise", "reward_std/helpful", "lambda/helpful", "kl", "kl_coef",
                "policy_loss"} <= row.keys()
    # the λ schedule: 2 preferences per step, each on the simplex, recorded per step
    assert len(out["lambda_schedule"]) == 6
    for lams in out["lambda_schedule"]:
        assert all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in lams)
    assert out["history"][-1]["restarts"] == 0
    # evaluated like the DPO methods: one point per grid λ, with the SFT base on the same grid alongside
    assert [tuple(p["weights"]) for p in out["points"]] == [tuple(w) for w in grid(uninterrupted["cfg"])]
    assert len(out["base_points"]) == len(out["points"]) and {"oracle"} <= out["points"][0]["mean"].keys()
    assert (uninterrupted["root"] / "unit-0" / "result" / "adapter" / "meta.json").is_file()
    # compared with the SFT base per grid λ, and the comparison logged with the last step
    assert [c["weights"] for c in out["vs_sft"]] == [p["weights"] for p in out["points"]]
    assert out["history"][-1]["vs_sft/gain_0"] == out["vs_sft"][0]["gain"]


def test_compare_to_base_is_a_paired_test_of_the_scalarized_oracle_reward() -> None:
    base = {"points": [{"weights": [0.5, 0.5]}], "oracle_rows": [[[0.0, 1.0], [0.0, 0.8], [0.2, 0.6]]]}
    (c,) = compare_to_base([{"weights": [0.5, 0.5]}], [[[1.0, 0.6], [0.4, 0.8], [0.2, 0.8]]], base)
    # λ·r: ours .8 .6 .5, base .5 .4 .4 -> per-prompt gains .3 .2 .1: mean .2, sd .1
    assert c["policy"] == pytest.approx(1.9 / 3) and c["base"] == pytest.approx(1.3 / 3)
    assert c["gain"] == pytest.approx(0.2) and c["z_paired"] == pytest.approx(0.2 / (0.1 / 3**0.5))
    assert c["z"] == pytest.approx(0.2 / ((0.07 / 3 + 0.01 / 3) / 3) ** 0.5)  # sample variances .07/3, .01/3


def test_stop_and_restart_resumes_bit_identically(uninterrupted: dict, base, tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path)
    assert run(cfg, base, tmp_path / "B", until_step=3) == {}  # stopped: nothing finished
    tensors, state = final_state(tmp_path / "B")
    assert state["step"] == 3 and state["data"] == {"epoch": 0, "index": 12} and len(state["lambda_schedule"]) == 3
    out = run(cfg, base, tmp_path / "B")["panacea_ppo"]  # a new run (new actors) picks up the checkpoint
    assert out["resumed_from_step"] == 3 and [r["step"] for r in out["history"]] == [1, 2, 3, 4, 5, 6]
    assert_same_state(final_state(tmp_path / "B"), final_state(uninterrupted["root"]))
    assert out["points"] == uninterrupted["out"]["points"]
    # a finished unit is a result, not a re-run
    again = run(cfg, base, tmp_path / "B")["panacea_ppo"]
    assert again["points"] == out["points"] and again["adapter"] == out["adapter"]


def _kill_trainer_after(root: Path, step: int, killed: list) -> None:
    pointer = root / "unit-0" / "latest"
    deadline = time.time() + 600
    while time.time() < deadline:
        if pointer.is_file() and pointer.read_text().strip() == f"step-{step:06d}":
            break
        time.sleep(0.02)
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == NAMESPACE and actor["name"].endswith("-trainer-1"):
            ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE))
            killed.append(actor["name"])
            return


def test_killed_trainer_rank_recovers_from_the_last_checkpoint(uninterrupted: dict, base, tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path)
    killed: list = []
    watcher = threading.Thread(target=_kill_trainer_after, args=(tmp_path / "C", 2, killed), daemon=True)
    watcher.start()
    out = run(cfg, base, tmp_path / "C")["panacea_ppo"]
    watcher.join(timeout=10)
    assert killed and killed[0].endswith("-g0-trainer-1")
    assert out["restarts"] == 1 and out["resumed_from_step"] == 2
    # every step's metrics exactly once, and the same training as if nothing had happened
    assert [r["step"] for r in out["history"]] == [1, 2, 3, 4, 5, 6]
    assert out["history"][-1]["restarts"] == 1
    assert_same_state(final_state(tmp_path / "C"), final_state(uninterrupted["root"]))
    assert without_timing(out["history"][:-1]) == without_timing(uninterrupted["out"]["history"][:-1])


def test_weight_sync_makes_the_engine_generate_with_the_new_version(local_ray, base, tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path)
    group = ActorGroup(cfg, "panacea_ppo", ray.put(base), None, "sync-test", 0, seed=0, n_heads=3)
    try:
        group.setup(0)
        group.sync(0)
        prompts = [p.text for p in load_task("tiny-hh").prompts("train")[:4]]
        lam = np.tile([0.3, 0.7], (4, 1))

        def rollout_vs_trainer() -> tuple[dict, float]:
            gen = group.generate(prompts, lam, max_new_tokens=8, temperature=1.0, do_sample=False, seed=0)
            batch = {**collate(gen["prompt_ids"], gen["response_ids"], group.info["pad_id"]),
                     "weights": torch.tensor(lam, dtype=torch.float32)}
            trainer_logp = torch.cat([o["logp"] for o in get_all(group.experience_refs(batch))])
            diff = 0.0
            for i, (p, lp) in enumerate(zip(gen["prompt_ids"], gen["logprobs"], strict=True)):
                diff = max(diff, (trainer_logp[i, len(p) - 1:len(p) - 1 + len(lp)] - torch.tensor(lp)).abs().max())
            return gen, float(diff)

        v0, diff = rollout_vs_trainer()
        assert v0["version"] == 0 and diff < 1e-4
        # the trainers move on (a perturbed update): until a sync the engine still generates with version 0
        state = group.state()
        policy = {k: v + 0.5 * torch.randn_like(v) for k, v in state["tensors"]["policy"].items()}
        group.load_state({**state["tensors"], "policy": policy}, state["meta"])
        stale, diff = rollout_vs_trainer()
        assert stale["version"] == 0 and stale["texts"] == v0["texts"] and diff > 1e-2
        group.sync(1)
        v1, diff = rollout_vs_trainer()
        assert v1["version"] == 1 and diff < 1e-4 and v1["texts"] != v0["texts"]
        with pytest.raises(ray.exceptions.RayTaskError, match="names differ"):
            ray.get(group.engines[0].load_weights.remote(2, {"not.a.parameter": torch.zeros(1)}))
    finally:
        group.shutdown()


def test_hf_reward_model_scores_its_objective_in_the_reward_worker(local_ray, base, gpt2_rm: Path,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    """ppo.reward_sources: hf — a Hugging Face sequence classifier (built and saved here) scores `helpful` inside
    the reward actor, next to the length rule, in one reward vector [B, K]."""
    from pareto.models.hf_reward import HFRewardModel

    data = small_cfg(tmp_path).model_dump(mode="json")
    data["reward_model"]["hf"] = [{"model": str(gpt2_rm), "objectives": ["helpful"], "template": "hh",
                                   "dtype": "float32"}]
    data["ppo"]["reward_sources"] = {"concise": "length"}  # helpful: hf by default, a reward_model.hf entry scores it
    cfg = config_from_dict(data)
    group = ActorGroup(cfg, "panacea_ppo", ray.put(base), None, "hf-reward-test", 0, seed=0, n_heads=3)
    try:
        prompts = [p.text for p in load_task("tiny-hh").prompts("train")[:3]]
        texts = ["Sure, here is how.", "No.", "Mix flour and water, knead, rest and bake it."]
        (out,) = get_all(group.score_refs(prompts, texts))
        want = HFRewardModel(cfg.reward_model.hf[0], device="cpu").score(prompts, texts)[:, 0]
        torch.testing.assert_close(out["reward"][:, 0], want, atol=1e-5, rtol=1e-4)
        assert out["reward"][:, 1].tolist() == [-4.0, -1.0, -9.0]
    finally:
        group.shutdown()


def test_morlhf_trains_one_policy_per_lambda(local_ray, base, tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path, "morlhf", max_steps=2, critic="scalar", scalarizer="tchebycheff")
    out = run(cfg, base, tmp_path / "M", method="morlhf")
    assert sorted(out) == ["morlhf/0", "morlhf/1"]
    for i, w in enumerate(grid(cfg)):
        unit = out[f"morlhf/{i}"]
        assert unit["weights"] == w.tolist() and [tuple(p["weights"]) for p in unit["points"]] == [tuple(w)]
        assert all(r["lambda/helpful"] == w[0] for r in unit["history"])  # λ fixed for the whole run
        assert any(name.endswith("adapter_config.json") for name in unit["adapter"])


# ---- the cluster path: `ray job submit`, an actor killed mid-job, the run read back from MLflow ---------------
JOB_CONFIG = {
    "name": "ppo-job-test", "seed": 0, "objectives": ["helpful", "concise"],
    "model": {"tiny": {**TINY, "sft_epochs": 2}},
    "reward_model": {"epochs": 20, "min_accuracy": 0.8},
    "methods": {
        "panacea_ppo": {"max_steps": 16, "prompts_per_step": 4, "samples_per_prompt": 2, "minibatches": 2,
                        "preferences_per_step": 2, "max_new_tokens": 16},
        "morlhf": {"max_steps": 2, "prompts_per_step": 4, "samples_per_prompt": 2, "minibatches": 2,
                   "max_new_tokens": 16},
    },
    "evaluation": {"grid_points": 2, "n_prompts": 8, "max_new_tokens": 16, "reference_point": [-0.1, -0.1]},
    "ppo": {"reward_sources": {"concise": "length"}, "checkpoint_every": 2},  # a learned head and a rule together
}

# python -c KILLER <ray address> <state dir> <method> <actor suffix> <last step>: kills the method's actor whose
# name ends with the suffix right after its first checkpoint (step >= 2) and before the last step
KILLER = """
import glob, sys, time, ray

address, state, method, suffix, last = sys.argv[1:6]
ray.init(address=address, log_to_driver=False)
pattern = state + "/checkpoints/" + method + "-*/unit-0/latest"
deadline = time.time() + 900
victim = None
while time.time() < deadline:
    # find the actor first (a GCS query, slow on a busy machine), so the kill lands right after the checkpoint
    if victim is None:
        for a in ray.util.list_named_actors(all_namespaces=True):
            if a["namespace"] == "pareto" and method in a["name"] and a["name"].endswith(suffix):
                victim = (a["name"], ray.get_actor(a["name"], namespace="pareto"))
        time.sleep(0.2)
        continue
    found = glob.glob(pattern)
    if found and 2 <= int(open(found[0]).read().strip().removeprefix("step-")) < int(last):  # mid-run
        ray.kill(victim[1])
        print("killed", victim[0], flush=True)
        break
    time.sleep(0.02)
"""


@pytest.mark.slow
def test_ray_job_submit_with_a_killed_actor(ray_head: dict, mlflow_server: str, tmp_path: Path,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    config = tmp_path / "ppo_job.yaml"
    config.write_text(json.dumps(JOB_CONFIG))  # JSON is YAML
    state = tmp_path / "state"
    killer = subprocess.Popen([sys.executable, "-c", KILLER, ray_head["address"], str(state), "panacea_ppo",
                               "-trainer-1", "16"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cmd = [_exe("ray"), "job", "submit", "--address", ray_head["dashboard"], "--working-dir", str(ROOT), "--",
           "python", "ray_jobs/train.py", "--config", str(config), "--set", f"tracking.uri={mlflow_server}",
           "--set", f"state_dir={state}"]
    with shared_stage_caches(state, tmp_path_factory):  # the subject is the PPO actors, not the base or reward model
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    killer_out = killer.communicate(timeout=120)[0]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "killed ppo-" in killer_out, killer_out
    assert "restart 1/2" in proc.stdout + proc.stderr

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    parent = mlflow.search_runs(experiment_names=["ppo-job-test"], filter_string="tags.`pareto.kind` = 'pipeline'",
                                output_format="list", order_by=["attributes.start_time DESC"])[0]
    assert parent.info.status == "FINISHED"
    for method, n_models in (("panacea_ppo", 1), ("morlhf", 2)):
        path = client.download_artifacts(parent.info.run_id, f"fronts/{method}.json", str(tmp_path))
        front = json.loads(Path(path).read_text())
        assert front["objectives"] == ["helpful", "concise"] and len(front["points"]) == 2
        assert parent.data.metrics[f"{method}/hypervolume"] >= 0
        method_run = mlflow.search_runs(experiment_names=["ppo-job-test"], output_format="list",
                                        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                                      f"and attributes.run_name = '{method}'")[0]
        models = mlflow.search_runs(experiment_names=["ppo-job-test"], output_format="list",
                                    filter_string=f"tags.mlflow.parentRunId = '{method_run.info.run_id}'")
        assert len(models) == n_models
    pan = mlflow.search_runs(experiment_names=["ppo-job-test"], output_format="list",
                             filter_string=f"attributes.run_name = 'panacea_ppo' and "
                                           f"tags.mlflow.parentRunId != '{parent.info.run_id}'")[0]
    for metric in ("kl", "timing/generation", "timing/training", "timing/sync",
                   "generation_tokens_per_second"):
        history = client.get_metric_history(pan.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, 17)), metric  # every step exactly once
    # resumed from a periodic checkpoint (which one depends on when the kill landed), never from scratch
    assert pan.data.metrics["restarts"] == 1 and pan.data.metrics["resumed_from_step"] in range(2, 16, 2)

    # served like the DPO methods: Panacea-PPO as one Panacea model (λ set in place), MORLHF per λ
    from pareto.serving import ServedRun

    served = ServedRun(parent.info.run_id, mlflow_server, cache_dir=tmp_path / "serving")
    prompt = load_task("tiny-hh").prompts("eval")[0].text
    for method in ("panacea_ppo", "morlhf"):
        text, choice = served.answer(method, prompt, [0.5, 0.5], max_new_tokens=16)
        assert isinstance(text, str) and choice.conditioned == (method == "panacea_ppo")
