"""Methods: each one file, each yielding a ConditionedPolicy that answers generate(prompts, λ)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np


class ConditionedPolicy(Protocol):
    """A policy that answers for any preference λ (one model for all λ, or a set of models)."""

    objectives: tuple[str, ...]

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        """weights: one λ [K] for all prompts, or one per prompt [B, K]."""
        ...

    def save(self, path: str | Path) -> None: ...


METHOD_NAMES = ("panacea", "per_weight_dpo")
