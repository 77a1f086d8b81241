"""evaluate_grid: means and standard errors per λ and scorer, computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pareto.evaluation import evaluate_grid
from pareto.models.policy import repetition_rate


class LengthScorer:
    names = ("words", "chars")

    def __call__(self, prompts, responses):
        return torch.tensor([[len(r.split()), len(r)] for r in responses], dtype=torch.float32)


def test_points_hold_per_weight_means_and_stderr() -> None:
    calls = []

    def generate(prompts, weights):
        calls.append(len(prompts))
        # the response depends on λ row by row: "a" repeated round(10·λ0)+1 times
        return [" ".join(["a"] * (int(round(10 * w[0])) + 1)) + (" b" if p == "q2" else "") for p, w in
                zip(prompts, weights, strict=True)]

    grid = np.array([[0.0, 1.0], [0.5, 0.5]])
    points = evaluate_grid(generate, ["q1", "q2"], grid, {"len": LengthScorer()}, batch_size=3)
    assert calls == [3, 1]  # rows of all λ are batched together
    first, second = points
    assert first.weights == (0.0, 1.0) and second.weights == (0.5, 0.5)
    # λ=(0,1): responses "a" (1 word) and "a b" (2 words) -> mean 1.5, stderr = std([1,2]) / sqrt(2) = 0.5
    assert first.mean["len"][0] == pytest.approx(1.5)
    assert first.stderr["len"][0] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    # λ=(0.5,0.5): 6 and 7 words
    assert second.mean["len"][0] == pytest.approx(6.5)
    assert second.mean_words == pytest.approx(6.5)


def test_repetition_rate_flags_loops_only() -> None:
    assert repetition_rate(["first, pack bags. then book rooms.", "a b c a b c a b c"]) == 0.5
    assert repetition_rate([]) == 0.0
