"""Benchmark 5: Ray overhead — the same DPO work (load the tiny policy, add LoRA, reference log-probs of 32
pairs, 8 DPO steps) as a Ray task vs a plain call in this process, alternated, median of the repeats.

Ray starts its workers at niceness 15 (RAY_worker_niceness); on a machine shared with other busy processes that
alone makes a worker several times slower than a nice-0 driver, which is scheduling, not Ray overhead. So by
default the workers run at niceness 0 here (`niceness=None` keeps Ray's default to see what the pipeline gets).
Ray's start-up (ray.init) is reported separately; the Ray task runs on an already-warm worker after the first
(untimed) call, as pipeline stages do. PPO-through-actors and sweep-concurrency figures are not measured here
(see RESULTS.md).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from benchmarks.common import SUBPROCESS_ENV, one_thread, row, skipped
from benchmarks.fixtures import OBJECTIVES, tiny_base, tiny_pairs


def dpo_work(base_dir: str, steps: int = 8, n_pairs: int = 32) -> float:
    """A small piece of pipeline work; returns the final loss so the call cannot be optimised away."""
    import torch
    from peft import LoraConfig, get_peft_model

    from pareto.config import DPOConfig
    from pareto.methods.dpo import reference_logps, train_dpo
    from pareto.models.policy import load_policy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tok = load_policy(base_dir)
    cfg = DPOConfig(max_steps=steps, batch_size=8, nll_weight=0.0, eval_every=10_000)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                             target_modules=cfg.target_modules, lora_dropout=0.0,
                                             task_type="CAUSAL_LM"))
    pairs = tiny_pairs().subset(range(n_pairs))
    with model.disable_adapter():
        pairs.ref_logp = reference_logps(model, tok, pairs, 128)
    result = train_dpo(model, tok, pairs, cfg, objectives=OBJECTIVES, sample_weights=lambda rng: np.ones(3) / 3,
                       apply_weights=lambda w: None, validate=lambda step: (0.0, {}, True), max_length=128,
                       desc="bench-ray")
    return float(result.history[-1].get("loss", 0.0))


def run(repeats: int = 3, niceness: int | None = 0) -> dict[str, Any]:
    one_thread()
    if niceness is not None:
        os.environ["RAY_worker_niceness"] = str(niceness)
    for key, value in SUBPROCESS_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError as err:
        return {"name": "ray_overhead", "rows": [skipped("Ray task vs in-process", "≤ 1.25×", str(err))],
                "details": {}}
    base = str(tiny_base())
    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_seconds = time.perf_counter() - start
    try:
        remote = ray.remote(num_cpus=1)(dpo_work)
        # warm both workers (start, imports, the cached pairs), as a long-lived pipeline pays once
        ray.get([remote.remote(base) for _ in range(2)])
        dpo_work(base)
        local, via_ray = [], []
        for _ in range(repeats):  # alternate so load changes on the shared machine hit both sides alike
            t = time.perf_counter()
            dpo_work(base)
            local.append(time.perf_counter() - t)
            t = time.perf_counter()
            ray.get(remote.remote(base))
            via_ray.append(time.perf_counter() - t)
    finally:
        ray.shutdown()
    t_local, t_ray = float(np.median(local)), float(np.median(via_ray))
    ratio = t_ray / t_local
    return {"name": "ray_overhead",
            "rows": [row("DPO work as a Ray task ÷ in-process", t_ray, t_local, "≤ 1.25×", ratio <= 1.25, "s", ratio,
                         note=f"ray.init {init_seconds:.1f} s not included; workers at niceness "
                              f"{'Ray default (15)' if niceness is None else niceness}"),
                     skipped("PPO through Ray actors ÷ one process", "≤ 1.25×", "not measured in this round"),
                     skipped("sweep trials/s, concurrency 2 ÷ 1", "≥ 1.6×", "not measured in this round")],
            "details": {"worker_niceness": niceness, "local_seconds": local, "ray_seconds": via_ray,
                        "ray_init_seconds": init_seconds}}
