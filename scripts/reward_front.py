"""The front a run's reward model would give if a policy always answered with its λ-best candidate (tiny-hh).

For every λ of the evaluation grid each eval prompt takes the candidate response whose z-scored reward-model vector
scores highest under λ; the front is the mean oracle vector of those answers. Next to it: the same choice by the
oracle itself, and by each objective's clean-label rank among the candidates (how many it beats minus how many
beat it): what the pairwise labels alone say, magnitudes aside. Each is printed with its IGD to the pipeline's
oracle front and its distance to the knee: the oracle front's most helpful point of full harmlessness.

This bounds what fitting the reward model's λ-scalarised gaps can reach (`targets: reward_model`,
docs/fronts.md): run the config first (`pareto run CONFIG --set seed=N`), then, with the same PARETO_HOME,

    python scripts/reward_front.py configs/quickstart.yaml --set seed=N --set evaluation.grid_points=15
"""

from __future__ import annotations

import sys

import numpy as np

from pareto.cache import cache_dir
from pareto.config import load_config
from pareto.data.task import build_task
from pareto.distributed.stages import oracle_front
from pareto.front.grid import preference_grid
from pareto.front.metrics import igd
from pareto.models.scorer import SourcedReward


def choose(scores: list[np.ndarray], values: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Mean of `values` over prompts of each prompt's λ-best candidate by `scores` (ties: the first), per λ."""
    return np.array([np.mean([v[np.argmax(s @ w)] for s, v in zip(scores, values, strict=True)], axis=0)
                     for w in weights])


def label_ranks(oracle: np.ndarray) -> np.ndarray:
    """[C, K]: per objective, the candidates each one beats minus those that beat it (clean pairwise labels)."""
    return (np.sign(oracle[:, None, :] - oracle[None, :, :])).sum(1)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    overrides = [a for flag, a in zip(argv[1:], argv[2:], strict=False) if flag == "--set"]
    cfg = load_config(argv[0], overrides=overrides)
    task = build_task(cfg)
    if task.synthetic is None:
        sys.exit(f"error: {argv[0]}: the task has no oracle (only tiny-hh does)")
    folder = cache_dir(cfg, "reward")
    if not (folder / "DONE").is_file():
        sys.exit(f"error: no reward model of this config and code in {folder.parent}; run `pareto run {argv[0]}` "
                 "with the same --set options and PARETO_HOME first")
    reward = SourcedReward.load(folder)
    prompts = task.synthetic.prompts("eval")[: cfg.evaluation.n_prompts or None]
    oracle, learned = [], []
    for prompt in prompts:
        candidates = task.synthetic.candidates(prompt)
        oracle.append(task.oracle([prompt.text] * len(candidates), candidates).numpy().astype(np.float64))
        learned.append(reward([prompt.text] * len(candidates), candidates).numpy().astype(np.float64))
    _, reference = oracle_front(task, cfg, n_prompts=cfg.evaluation.n_prompts)
    if not {"helpful", "harmless"} <= set(cfg.objectives):
        sys.exit(f"error: {argv[0]}: objectives {cfg.objectives} lack helpful and harmless, which the knee needs")
    helpful, harmless = cfg.objectives.index("helpful"), cfg.objectives.index("harmless")
    safest = reference[reference[:, harmless] >= reference[:, harmless].max() - 1e-9]
    knee = safest[np.argmax(safest[:, helpful])]  # every risky request refused, every safe one answered in full
    grid = preference_grid(cfg.k, n_points=cfg.evaluation.grid_points)
    print(f"seed {cfg.seed}: {len(grid)} λ, {len(prompts)} eval prompts; knee {[round(float(x), 2) for x in knee]}")
    ranks = [label_ranks(o) for o in oracle]
    for name, scores in (("oracle", oracle), ("reward model", learned), ("label ranks", ranks)):
        front = choose(scores, oracle, grid)
        print(f"  λ-best candidate by {name:12s}  IGD {igd(front, reference):.4f}  "
              f"knee {np.linalg.norm(front - knee, axis=1).min():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
