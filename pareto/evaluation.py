"""Evaluate a conditioned policy on a λ grid: generate on held-out prompts, score with every scorer.

Each point carries the mean and standard error over prompts, per objective and per scorer (oracle and learned
reward model), plus the share of degenerate (repetitive) generations and a few samples to read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pareto.models.policy import repetition_rate
from pareto.objectives import VectorReward

GenerateFn = Callable[[list[str], np.ndarray], list[str]]  # (prompts, λ per row [B, K]) -> responses


@dataclass
class PointEval:
    weights: tuple[float, ...]
    mean: dict[str, tuple[float, ...]]     # scorer -> per-objective mean over prompts
    stderr: dict[str, tuple[float, ...]]   # scorer -> per-objective standard error
    repetition_rate: float
    mean_words: float
    samples: list[dict] = field(default_factory=list)
    empty_rate: float = 0.0                # share of empty answers (with repetition_rate: is the text still text)
    # scorer -> per-prompt scores [n, K]: every point answers the same prompts, so two points are compared by the
    # standard error of their paired differences (front.metrics.difference_stderr), not of two independent means
    scores: dict[str, list[list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"weights": list(self.weights), "mean": {k: list(v) for k, v in self.mean.items()},
                "stderr": {k: list(v) for k, v in self.stderr.items()}, "repetition_rate": self.repetition_rate,
                "mean_words": self.mean_words, "samples": self.samples,
                "empty_rate": self.empty_rate, "scores": self.scores}

    @classmethod
    def from_dict(cls, d: dict) -> PointEval:
        return cls(tuple(d["weights"]), {k: tuple(v) for k, v in d["mean"].items()},
                   {k: tuple(v) for k, v in d["stderr"].items()}, d["repetition_rate"], d["mean_words"],
                   d.get("samples", []), d.get("empty_rate", 0.0), d.get("scores", {}))


def evaluate_grid(generate: GenerateFn, prompts: Sequence[str], grid: np.ndarray,
                  scorers: Mapping[str, VectorReward], batch_size: int = 96, n_samples: int = 3) -> list[PointEval]:
    """All (λ, prompt) rows are generated in large batches: a conditioned model serves many λ in one call."""
    grid = np.atleast_2d(np.asarray(grid, dtype=np.float64))
    rows_prompts = [p for _ in grid for p in prompts]
    rows_weights = np.repeat(grid, len(prompts), axis=0)
    responses: list[str] = []
    for s in range(0, len(rows_prompts), batch_size):
        responses += generate(rows_prompts[s:s + batch_size], rows_weights[s:s + batch_size])
    scores = {name: scorer(rows_prompts, responses).reshape(len(grid), len(prompts), -1)
              for name, scorer in scorers.items()}
    points = []
    n = len(prompts)
    for g, weights in enumerate(grid):
        texts = responses[g * n:(g + 1) * n]
        mean = {k: tuple(v[g].mean(0).tolist()) for k, v in scores.items()}
        stderr = {k: tuple((v[g].std(0, unbiased=True) / n**0.5).tolist()) if n > 1 else (0.0,) * v.shape[-1]
                  for k, v in scores.items()}
        samples = [{"prompt": prompts[i], "response": texts[i]} for i in range(min(n_samples, n))]
        points.append(PointEval(tuple(float(w) for w in weights), mean, stderr, repetition_rate(texts),
                                float(np.mean([len(t.split()) for t in texts])), samples,
                                float(np.mean([not t.strip() for t in texts])),
                                {k: v[g].tolist() for k, v in scores.items()}))
    return points


def stack_means(points: Sequence[PointEval], scorer: str) -> torch.Tensor:
    return torch.tensor([p.mean[scorer] for p in points])
