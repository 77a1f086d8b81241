"""Benchmark 4: vector reward throughput — one multi-head reward model (K=3, one MiniLM pass) vs three
single-head models (three MiniLM passes), in preference pairs scored per second.

Both sides score both responses of the same tiny-hh pairs. The encoder's text cache is cleared before every
scoring call, so each single-head model really runs its own encoder pass (as three separate reward models do)
and the multi-head model is not helped by an earlier call. Medians over repeats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import median_seconds, one_thread, row
from benchmarks.fixtures import OBJECTIVES, tiny_pairs

K = len(OBJECTIVES)


def run(n_pairs: int = 64, repeats: int = 3) -> dict[str, Any]:
    import torch

    from pareto.models.reward import LearnedVectorReward, MultiHeadRewardModel, TextEncoder

    one_thread()
    torch.manual_seed(0)
    pairs = tiny_pairs()
    prompts = pairs.prompts[:n_pairs] * 2
    responses = [r[0] for r in pairs.responses[:n_pairs]] + [r[1] for r in pairs.responses[:n_pairs]]
    encoder = TextEncoder()
    multi = LearnedVectorReward(encoder, MultiHeadRewardModel(K), OBJECTIVES)
    singles = [LearnedVectorReward(encoder, MultiHeadRewardModel(1), (name,)) for name in OBJECTIVES]

    def score_multi() -> np.ndarray:
        encoder.clear_cache()
        return multi(prompts, responses).numpy()

    def score_singles() -> np.ndarray:
        cols = []
        for model in singles:
            encoder.clear_cache()  # a separate reward model has its own encoder: nothing is shared
            cols.append(model(prompts, responses).numpy())
        return np.concatenate(cols, axis=1)

    assert score_multi().shape == score_singles().shape == (2 * n_pairs, K)
    t_multi = median_seconds(score_multi, repeats)
    t_singles = median_seconds(score_singles, repeats)
    ratio = t_singles / t_multi
    return {"name": "vector_reward",
            "rows": [row("vector reward pairs/s: multi-head K=3 vs 3 single-head models", n_pairs / t_multi,
                         n_pairs / t_singles, "≥ 2.5×", ratio >= 2.5, "pairs/s", ratio)],
            "details": {"n_pairs": n_pairs, "repeats": repeats, "seconds_multi": t_multi,
                        "seconds_three_single": t_singles}}
