"""Panacea-GRPO: one SVD-LoRA policy for every λ, trained by GRPO on the vector reward (preference-conditioned GRPO).

Each step draws `preferences_per_step` λ (Dirichlet(1) mixed with simplex vertices), each for a group of prompts;
the rollout engine gets λ written into the SVD-LoRA singular values with the batch and samples G answers per
prompt. A sample's advantage is its reward vector standardised per objective within its prompt's group, then
scalarised by that group's λ (`normalize: sum`: scalarise, then standardise); PPO's clipped surrogate plus a
β·KL(π_θ ‖ π_ref) loss term, no critic. One model serves the whole front: λ is switched in place at inference
(`PanaceaPolicy`), as for Panacea-DPO and Panacea-PPO.

The loop runs on the PPO actors (`pareto.distributed.ppo`); the policy hooks are Panacea-PPO's.
"""

from __future__ import annotations

from pareto.methods.panacea_ppo import apply_preferences, build_policy, save_policy, step_preferences

__all__ = ["apply_preferences", "build_policy", "fit", "save_policy", "step_preferences"]


def fit(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("panacea_grpo is trained by GRPO on Ray actors, not as a single task: the pipeline runs it "
                       "with pareto.distributed.ppo.run_ppo_method(cfg, 'panacea_grpo', ...)")
