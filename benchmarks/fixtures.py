"""Inputs the speed benchmarks share: an untrained tiny Llama (the quickstart's shape) and tiny-hh pairs.

Untrained weights are fine here: the benchmarks time compute, not answers, and building one takes seconds.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

OBJECTIVES = ("helpful", "harmless", "concise")


@functools.cache
def tiny_base() -> Path:
    """A saved tiny Llama + tokenizer (TinyModelConfig defaults), built once per process."""
    from pareto.config import TinyModelConfig
    from pareto.data import load_task
    from pareto.models.policy import build_tiny_model, save_model, train_tokenizer

    tmp = tempfile.mkdtemp(prefix="pareto-bench-base-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    out = Path(tmp) / "base"
    task = load_task("tiny-hh", seed=0)
    cfg = TinyModelConfig()
    tokenizer = train_tokenizer([f"User: {p}\nAssistant: {r}" for p, r in task.sft_examples()[:2000]],
                                cfg.vocab_size)
    save_model(build_tiny_model(cfg, tokenizer, 0), tokenizer, out)
    return out


@functools.cache
def tiny_pairs(n: int = 256):
    """The first `n` tiny-hh training pairs as a PairSet over the three objectives."""
    from pareto.data import load_task
    from pareto.methods.dpo import PairSet

    pairs = load_task("tiny-hh", seed=0).preference_pairs("train", 4, 0.1)[:n]
    return PairSet.from_pairs(pairs, [0, 1, 2])
