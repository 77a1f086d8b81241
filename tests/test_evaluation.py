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


def test_repetition_penalty_decodes_alike_in_every_backend(tiny_lm) -> None:
    """`evaluation.repetition_penalty`: 1 is no penalty at all (bit-identical answers), a penalty changes answers
    and repeats fewer tokens, and the evaluation path and the serving backend decode alike."""
    from pareto.data import load_task
    from pareto.generation.hf import HFGenerator
    from pareto.models.policy import generate, load_policy

    prompts = [p.text for p in load_task("tiny-hh", seed=0).prompts("eval")[:8]]
    model, tok = load_policy(tiny_lm)
    plain = generate(model, tok, prompts, max_new_tokens=32)
    assert generate(model, tok, prompts, max_new_tokens=32, repetition_penalty=1.0) == plain
    penalised = generate(model, tok, prompts, max_new_tokens=32, repetition_penalty=1.8)
    assert penalised != plain

    def repeated_tokens(texts: list[str]) -> float:  # share of answer tokens seen earlier in the same answer
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        return sum(len(i) - len(set(i)) for i in ids) / max(1, sum(len(i) for i in ids))

    assert repeated_tokens(penalised) < 0.5 * repeated_tokens(plain)
    assert HFGenerator(tiny_lm).generate(prompts, max_new_tokens=32, repetition_penalty=1.8) == penalised
