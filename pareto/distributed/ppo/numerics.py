"""The PPO controller's computations on the driver (`controller.py`), free of Ray and actors: the advantages, where
λ scalarizes the reward vector; the check that the engines' weights are the trainer's; the rollout rows kept; and the
paired test of the trained policy against the SFT base."""

from __future__ import annotations

import numpy as np
import torch

from pareto.objectives.rl import combine_objectives, gae, group_advantages, masked_whiten, token_rewards

ROLLOUT_SAMPLES = 4  # rollout rows kept per unit, with the tokens the model saw


def ppo_advantages(mcfg, whitened: torch.Tensor, lam: torch.Tensor, kl_tok: torch.Tensor, values: torch.Tensor,
                   mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """λ scalarizes the whitened reward vector [B, K] here, with the KL penalty β·KL per token; GAE on the critic's
    values. -> (the scalarized score [B], the advantages [B, T-1], the returns [B, T-1, H])."""
    if mcfg.critic == "per_objective":
        # K objective heads + one for the KL penalty (already scaled by β, so its mixing weight is 1)
        heads = torch.cat([token_rewards(whitened, mask), -beta * kl_tok.unsqueeze(-1)], dim=-1)
        adv_heads, returns = gae(heads, values, mask, mcfg.gamma, mcfg.gae_lambda)
        mix = torch.cat([lam, torch.ones(lam.shape[0], 1)], dim=1)
        advantages = (adv_heads * mix[:, None, :]).sum(-1)
        score = (whitened * lam).sum(-1)
    else:
        score = combine_objectives(whitened, lam, mcfg.scalarizer, mcfg.ideal)
        advantages, returns = gae(token_rewards(score, mask) - beta * kl_tok, values[..., 0], mask, mcfg.gamma,
                                  mcfg.gae_lambda)
        returns = returns.unsqueeze(-1)
    if mcfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return score, advantages, returns


def grpo_advantages(mcfg, raw: torch.Tensor, whitened: torch.Tensor, lam: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: rows come in groups of `samples_per_prompt` answers to one prompt, under one λ. Each row's advantage is
    its group-standardised, λ-scalarized reward (`group_advantages`), on every response token.
    -> (the scalarized whitened score [B], for logging like PPO's; the advantages [B, T-1])."""
    g = mcfg.samples_per_prompt
    b, k = raw.shape
    if b % g:
        raise ValueError(f"{b} rollout rows do not form groups of samples_per_prompt={g}")
    group_lam = lam.view(b // g, g, k)[:, 0]
    adv = group_advantages(raw.view(b // g, g, k).double(), group_lam.double(), mcfg.scalarizer, mcfg.normalize,
                           ideal=mcfg.ideal if mcfg.normalize == "per_objective" else 0.0)
    advantages = adv.reshape(b, 1).to(raw.dtype) * mask
    if mcfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return combine_objectives(whitened, lam, mcfg.scalarizer, mcfg.ideal), advantages


def rollout_logprob_diff(gen: dict, old_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """The largest gap between the rollout engine's and the trainer's log-probs of the same tokens."""
    rollout_logp = torch.zeros_like(old_logp)
    for i, (p, lp) in enumerate(zip(gen["prompt_ids"], gen["logprobs"], strict=True)):
        rollout_logp[i, len(p) - 1: len(p) - 1 + len(lp)] = torch.tensor(lp)
    return float(((rollout_logp - old_logp).abs() * mask).max())


def rollout_samples(rows: list[str], gen: dict, raw: torch.Tensor) -> list[dict]:
    """What the policy saw and answered (the first rows of the step): the task's prompt, the token ids the engine
    fed the model (the prompt rendered by the model's chat template), the answer and its reward vector."""
    return [{"prompt": rows[i], "prompt_ids": list(gen["prompt_ids"][i]), "response": gen["texts"][i],
             "reward": raw[i].tolist()} for i in range(min(ROLLOUT_SAMPLES, len(rows)))]


def compare_to_base(points: list[dict], rows: list, base: dict) -> list[dict]:
    """λ-scalarized oracle reward of the trained policy vs the SFT base, per grid λ, on the same eval prompts.

    z_paired uses per-prompt differences (the same prompts answered by both); z uses independent standard errors.
    """
    base_rows = {tuple(p["weights"]): np.asarray(r) for p, r in zip(base["points"], base["oracle_rows"], strict=True)}
    out = []
    for point, r in zip(points, rows, strict=True):
        w = np.asarray(point["weights"])
        ours, theirs = np.asarray(r) @ w, base_rows[tuple(point["weights"])] @ w
        n, diff = len(ours), ours - theirs
        se_paired = max(float(diff.std(ddof=1)) / n**0.5, 1e-9)
        se = max(float(np.sqrt(ours.var(ddof=1) / n + theirs.var(ddof=1) / n)), 1e-9)
        out.append({"weights": list(point["weights"]), "policy": float(ours.mean()), "base": float(theirs.mean()),
                    "gain": float(diff.mean()), "se": se, "z": float(diff.mean()) / se, "se_paired": se_paired,
                    "z_paired": float(diff.mean()) / se_paired})
    return out


def vs_sft_table(name: str, rows: list[dict], objectives: list[str]) -> str:
    lines = [f"{name}: λ-scalarized oracle reward vs the SFT base (λ over {', '.join(objectives)})"]
    for c in rows:
        lam = ", ".join(f"{w:.2f}" for w in c["weights"])
        lines.append(f"  λ=({lam})  policy {c['policy']:.3f}  base {c['base']:.3f}  gain {c['gain']:+.3f}  "
                     f"z={c['z']:.1f} (paired {c['z_paired']:.1f})")
    return "\n".join(lines)
