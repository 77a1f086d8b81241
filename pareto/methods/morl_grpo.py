"""MORL-GRPO: GRPO on the λ-scalarized reward vector, one LoRA policy per λ of the grid (MORLHF without a critic).

Each step samples G answers per prompt (the prompt's *group*). Each objective's reward is standardised within the
group (GDPO-style, `normalize: per_objective`; or the λ-weighted raw sum is, `normalize: sum`), scalarised by the
policy's fixed λ, and that number is every answer token's advantage in PPO's clipped surrogate; β·KL(π_θ ‖ π_ref)
is a loss term (k3 estimator, per token). The group mean is the baseline, so the trainer ranks hold no critic.

The loop runs on the PPO actors (`pareto.distributed.ppo`: rollout engines, reward and reference workers, trainer
ranks); the policy hooks are MORLHF's: the same LoRA adapter, λ fixed per run, the same layout for serving.
"""

from __future__ import annotations

from pareto.methods.morlhf import apply_preferences, build_policy, save_policy, step_preferences

__all__ = ["apply_preferences", "build_policy", "fit", "save_policy", "step_preferences"]


def fit(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("morl_grpo is trained by GRPO on Ray actors, not as a single task: the pipeline runs it with "
                       "pareto.distributed.ppo.run_ppo_method(cfg, 'morl_grpo', ...)")
