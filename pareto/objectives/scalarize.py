"""Scalarizers: a reward vector (or a loss vector) and a preference λ in, one number out.

Rewards are maximised, losses minimised; both forms live here so every method shares one definition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def linear(rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """LS: Σ_i λ_i r_i."""
    return (rewards * weights).sum(-1)


def tchebycheff(rewards: torch.Tensor, weights: torch.Tensor, ideal: torch.Tensor | None = None) -> torch.Tensor:
    """Tchebycheff for maximisation: min_i λ_i (r_i − z_i), z the ideal (utopia) point (0 if not given)."""
    ideal = torch.zeros_like(rewards) if ideal is None else ideal
    return (weights * (rewards - ideal)).min(-1).values


def log_sigmoid(rewards: torch.Tensor, weights: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """"Transforming and Combining Rewards": Σ_i λ_i log σ(r_i − ref_i), a soft AND over objectives."""
    reference = torch.zeros_like(rewards) if reference is None else reference
    return (weights * torch.nn.functional.logsigmoid(rewards - reference)).sum(-1)


SCALARIZERS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear,
    "tchebycheff": tchebycheff,
    "log_sigmoid": log_sigmoid,
}


def scalarize(name: str, rewards: torch.Tensor, weights: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
    if name not in SCALARIZERS:
        raise ValueError(f"unknown scalarizer {name!r}; choose one of {sorted(SCALARIZERS)}")
    return SCALARIZERS[name](rewards, weights, **kwargs)


def aggregate_losses(losses: torch.Tensor, weights: torch.Tensor, method: str = "linear",
                     ideal: torch.Tensor | None = None, mu: float = 0.1) -> torch.Tensor:
    """Aggregate per-objective losses [..., K] by λ into one loss to minimise.

    linear:             Σ_i λ_i L_i
    tchebycheff:        max_i λ_i (L_i − z_i), z = 0 by default (a DPO loss is ≥ 0).
    smooth_tchebycheff: μ log Σ_i exp(λ_i (L_i − z_i) / μ) (Lin et al., ICML 2024): Tchebycheff's max made smooth,
                        so every objective gets a gradient, in proportion to how close it is to the worst one;
                        → tchebycheff as μ → 0.
    """
    if method == "linear":
        return (losses * weights).sum(-1)
    ideal = torch.zeros_like(losses) if ideal is None else ideal
    if method == "tchebycheff":
        return (weights * (losses - ideal)).max(-1).values
    if method == "smooth_tchebycheff":
        return mu * torch.logsumexp(weights * (losses - ideal) / mu, dim=-1)
    raise ValueError(f"unknown loss aggregation {method!r}; choose 'linear', 'tchebycheff' or 'smooth_tchebycheff'")
