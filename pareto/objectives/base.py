"""Objective protocol, the vector reward and its z-score normaliser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Objective(Protocol):
    """A named scalar to maximise, scored per (prompt, response)."""

    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:  # [B]
        ...


@dataclass
class RunningZScore:
    """Per-objective running mean/std (Welford, batched), so objectives on different scales compare.

    Stats are fitted on a reference set and then frozen; they are logged with the run.
    """

    names: tuple[str, ...]
    count: int = 0
    mean: list[float] = field(default_factory=list)
    m2: list[float] = field(default_factory=list)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if not self.mean:
            self.mean = [0.0] * len(self.names)
            self.m2 = [0.0] * len(self.names)

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().reshape(-1, len(self.names))
        n_b = values.shape[0]
        if n_b == 0:
            return
        mean_b = values.mean(0)
        m2_b = ((values - mean_b) ** 2).sum(0)
        mean_a = torch.tensor(self.mean, dtype=torch.float64)
        m2_a = torch.tensor(self.m2, dtype=torch.float64)
        n = self.count + n_b
        delta = mean_b - mean_a
        self.mean = (mean_a + delta * n_b / n).tolist()
        self.m2 = (m2_a + m2_b + delta**2 * self.count * n_b / n).tolist()
        self.count = n

    @property
    def std(self) -> list[float]:
        if self.count < 2:
            return [1.0] * len(self.names)
        return [max((m2 / (self.count - 1)) ** 0.5, self.eps) for m2 in self.m2]

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=values.dtype, device=values.device)
        std = torch.tensor(self.std, dtype=values.dtype, device=values.device)
        return (values - mean) / std

    def state_dict(self) -> dict:
        return {"names": list(self.names), "count": self.count, "mean": self.mean, "std": self.std,
                "m2": self.m2}

    @classmethod
    def from_state_dict(cls, state: dict) -> RunningZScore:
        return cls(names=tuple(state["names"]), count=int(state["count"]), mean=list(state["mean"]),
                   m2=list(state["m2"]))


class VectorReward(Protocol):
    """K objectives scored together: `[B, K]`, never summed before a scalarizer."""

    names: tuple[str, ...]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:  # [B, K]
        ...


class ZScoredReward:
    """A VectorReward whose `raw` scores are z-scored by a normaliser fit once on a reference set and frozen after
    (the learned heads, HF reward models, the sourced reward model share this)."""

    names: tuple[str, ...]
    normalizer: RunningZScore

    def raw(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:  # [B, K], unnormalised
        raise NotImplementedError

    def fit_normalizer(self, prompts: Sequence[str], responses: Sequence[str]) -> RunningZScore:
        """Fit z-score stats on a reference set; they stay frozen afterwards (`__call__` never updates them)."""
        norm = RunningZScore(names=self.names)
        norm.update(self.raw(prompts, responses))
        self.normalizer = norm
        return norm

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.normalizer(self.raw(prompts, responses)).float()


@dataclass
class ObjectiveSet:
    """A VectorReward made of independent objectives (e.g. the oracle of a synthetic task)."""

    objectives: tuple[Objective, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return torch.stack([o.score(prompts, responses).float() for o in self.objectives], dim=-1)
