"""MORLHF: PPO on the λ-scalarized reward vector, one LoRA policy per λ of the grid (the per-weight RL baseline).

max_θ E[ s_λ(r̃(x, y)) ] − β·KL(π_θ ‖ π_SFT), with r̃ the per-objective whitened reward vector and s_λ the
scalarizer (linear by default). λ is fixed for the whole run, so the grid costs one PPO run per λ.

The PPO loop itself runs on Ray actors (`pareto.distributed.ppo`); this module says what is method-specific:
the policy's adapter, where λ comes from each step, and how the trained policy is saved and served.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from pareto.config import MORLHFConfig
from pareto.models.conditioned import PerWeightPolicy, adapter_name
from pareto.models.policy import lora_targets


def build_policy(base: PreTrainedModel, n_objectives: int, cfg: MORLHFConfig) -> PeftModel:
    """The base model with one trainable LoRA adapter (named like the per-weight DPO adapters, for serving)."""
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      target_modules=lora_targets(base, cfg.target_modules, cfg.lora_layers), lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    return get_peft_model(base, lora, adapter_name=adapter_name(0))


def step_preferences(cfg: MORLHFConfig, n_objectives: int, seed: int, step: int, n_prompts: int,
                     weights: Sequence[float] | None = None) -> np.ndarray:
    """λ per prompt [n_prompts, K] of one PPO step: the run's fixed λ."""
    if weights is None:
        raise ValueError("morlhf trains one policy per λ: pass weights")
    return np.tile(np.asarray(weights, dtype=np.float64), (n_prompts, 1))


def apply_preferences(model: PeftModel, rows: np.ndarray) -> None:
    """Nothing to do: a MORLHF policy is not conditioned on λ."""


def save_policy(model: PeftModel, tokenizer, objectives: Sequence[str], weights: Sequence[float] | None,
                path: str | Path) -> None:
    """PEFT save_pretrained (safetensors) under path/w0, the layout `PerWeightPolicy.load` and serving read."""
    PerWeightPolicy(model, tokenizer, objectives, {adapter_name(0): np.asarray(weights, dtype=np.float64)}).save(path)


def fit(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("morlhf is trained by PPO on Ray actors, not as a single task: the pipeline runs it with "
                       "pareto.distributed.ppo.run_ppo_method(cfg, 'morlhf', ...)")
