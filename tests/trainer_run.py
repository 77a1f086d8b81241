"""One DPO-family trainer on the tiny LM, as its own process, for the kill-and-resume tests (tests/test_resume.py).

    python -m tests.trainer_run METHOD BASE_DIR CHECKPOINT_DIR OUT_JSON

Trains METHOD with checkpoints under CHECKPOINT_DIR (resuming from the newest one there), then writes OUT_JSON:
the checkpoint step it resumed from, the trained parameters' sha256, and the front its policy gives (oracle
scores on held-out prompts at the λ grid), so two runs can be compared bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

from pareto.config import MAHDPOConfig, MODPOConfig, PanaceaConfig, PerWeightConfig, RiCConfig, SoupsConfig
from pareto.data import load_task
from pareto.data.task import TaskOracle
from pareto.evaluation import evaluate_grid
from pareto.methods import FitContext, load_method
from pareto.methods.dpo import PairSet

OBJECTIVES = ("helpful", "harmless")
COMMON = {"max_steps": 40, "eval_every": 10, "checkpoint_every": 5, "keep_checkpoints": 2, "batch_size": 4,
          "val_prompts": 2, "max_repetition": 1.0, "lr": 3e-3}
CONFIGS = {"panacea": PanaceaConfig, "per_weight_dpo": PerWeightConfig, "mah_dpo": MAHDPOConfig,
           "soups": SoupsConfig, "modpo": MODPOConfig}
# RiC checkpoints once per phase: the offline pass, then each online round
RIC = {"epochs": 2, "batch_size": 8, "offline_samples": 32, "online_rounds": 4, "online_prompts": 8,
       "origin_samples": 16, "val_prompts": 2, "max_repetition": 1.0}
WEIGHTS = {"per_weight_dpo": [0.7, 0.3], "modpo": [0.7, 0.3]}  # the per-weight methods train one λ


def main(method: str, base_dir: Path, checkpoint_dir: Path, out: Path) -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the pipeline's stages run (stages._setup)
    set_seed(0)
    task = load_task("tiny-hh", seed=0)
    index = [task.objectives.index(o) for o in OBJECTIVES]
    pairs = PairSet.from_pairs(task.preference_pairs("train", 4, 0.1, seed=0)[:32], index)
    reward = TaskOracle(task, OBJECTIVES)
    ctx = FitContext(base_dir=base_dir, pairs=pairs, val_prompts=[p.text for p in task.prompts("val")][:2],
                     reward=reward, objectives=OBJECTIVES, max_length=256, seed=0,
                     gen={"max_new_tokens": 8, "do_sample": False, "temperature": 1.0}, task=task,
                     checkpoint_dir=checkpoint_dir)
    cfg = RiCConfig(**RIC) if method == "ric" else CONFIGS[method](**COMMON)
    found = sorted(checkpoint_dir.rglob("step-*"))
    resumed_from = max((int(p.name.split("-")[1]) for p in found), default=0)
    policy, result = load_method(method).fit(ctx, cfg, WEIGHTS.get(method))
    digest = hashlib.sha256()
    for name, p in sorted(policy.model.named_parameters()):
        digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
    grid = np.array([WEIGHTS[method]]) if method in WEIGHTS else np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    prompts = [p.text for p in task.prompts("eval")][:6]
    points = evaluate_grid(lambda p, w: policy.generate(p, w, max_new_tokens=8), prompts, grid, {"oracle": reward})
    out.write_text(json.dumps({"resumed_from": resumed_from, "steps": result.steps, "best_step": result.best_step,
                               "parameters": digest.hexdigest(), "history": result.history,
                               "front": [p.mean["oracle"] for p in points]}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
