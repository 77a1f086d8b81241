"""Panacea-PPO: one SVD-LoRA policy for every λ, trained by PPO on the λ-scalarized reward vector.

Each PPO step samples λ (Dirichlet(1) mixed with simplex vertices; `preferences_per_step` of them, each on a group
of prompts), writes it into the SVD-LoRA singular values of the rollout engine together with the batch, and
the trainer scalarizes the whitened reward vector by the same per-row λ at the advantage step. The result is
a Panacea model: served by `PanaceaPolicy`, λ switched in place at inference.

The PPO loop runs on Ray actors (`pareto.distributed.ppo`); this module holds what is method-specific.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from peft import PeftModel
from transformers import PreTrainedModel

from pareto.config import PanaceaPPOConfig
from pareto.front.grid import sample_preferences
from pareto.models.policy import lora_targets
from pareto.models.svd_lora import add_panacea_adapter, panacea_lora_config, save_panacea, set_preference


def build_policy(base: PreTrainedModel, n_objectives: int, cfg: PanaceaPPOConfig) -> PeftModel:
    """The base model with a Panacea SVD-LoRA adapter (σ = s = 0 at init: exactly the base model)."""
    return add_panacea_adapter(base, panacea_lora_config(n_objectives, cfg.lora_rank, cfg.lora_alpha,
                                                         lora_targets(base, cfg.target_modules, cfg.lora_layers)))


def step_preferences(cfg: PanaceaPPOConfig, n_objectives: int, seed: int, step: int, n_prompts: int,
                     weights: Sequence[float] | None = None) -> np.ndarray:
    """λ per prompt [n_prompts, K] for one step: `preferences_per_step` draws, each repeated over a group.

    Seeded by (seed, step) alone, so a resumed run replays exactly the same λ schedule.
    """
    rng = np.random.default_rng([seed, step, 0x9A7E])
    draws = sample_preferences(rng, n_objectives, cfg.preferences_per_step, cfg.vertex_prob)
    return np.repeat(draws, n_prompts // cfg.preferences_per_step, axis=0)


def apply_preferences(model: PeftModel, rows: np.ndarray) -> None:
    """Write one λ per batch row into every SVD-LoRA layer (no reload, no merge)."""
    set_preference(model, rows)


def save_policy(model: PeftModel, tokenizer, objectives: Sequence[str], weights: Sequence[float] | None,
                path: str | Path) -> None:
    """The Panacea adapter (safetensors + meta.json), loadable by `PanaceaPolicy.load`."""
    save_panacea(model, path)


def fit(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError("panacea_ppo is trained by PPO on Ray actors, not as a single task: the pipeline runs it "
                       "with pareto.distributed.ppo.run_ppo_method(cfg, 'panacea_ppo', ...)")
