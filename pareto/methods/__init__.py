"""Methods: each one file, each yielding a ConditionedPolicy that answers generate(prompts, λ)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from pareto.config import METHODS, DPOConfig, RiCConfig
from pareto.methods.checkpoint import Checkpoints
from pareto.methods.dpo import PairSet
from pareto.models.conditioned import ConditionedPolicy
from pareto.models.policy import load_policy
from pareto.objectives import VectorReward


def pair_rewards(reward: VectorReward, pairs: PairSet) -> torch.Tensor:
    """The vector reward of both responses of every pair: [N, 2, K] (one batched call)."""
    n = len(pairs)
    scores = reward(pairs.prompts * 2, [r[0] for r in pairs.responses] + [r[1] for r in pairs.responses])
    return torch.stack([scores[:n], scores[n:]], dim=1).float()


@dataclass
class FitContext:
    """Everything a method's `fit` gets besides its own config section."""

    base_dir: Path               # the base policy (save_pretrained directory)
    pairs: PairSet               # training preference pairs with per-objective labels
    val_prompts: list[str]       # held-out prompts for early stopping
    reward: VectorReward         # the learned vector reward (z-scored)
    objectives: tuple[str, ...]
    max_length: int
    seed: int
    gen: dict                    # generation settings used for validation and evaluation
    task: object = None          # the task (pareto.data.task.Task), for methods that need more than pairs
    placement: object = None     # pareto.models.device.Placement: device, autocast dtype, gradient checkpointing
    load_options: dict = field(default_factory=dict)  # load_policy's dtype / trust_remote_code (model section)
    checkpoint_dir: Path | None = None  # where this fit's trainers checkpoint (None: no checkpoints, e.g. tests)
    cache_dir: Path | None = None  # the state's cache folder: reference log-probs shared by per-weight models
    _scores: torch.Tensor | None = field(default=None, init=False, repr=False)  # reward-model scores of `pairs`

    def load_base(self) -> tuple:
        """(model, tokenizer) of the base policy, on this fit's device, checkpointed when the config asks."""
        placed = {} if self.placement is None else self.placement.load_kwargs()
        return load_policy(self.base_dir, **self.load_options, **placed)

    def training_pairs(self, cfg: DPOConfig) -> PairSet:
        """The training pairs; with `targets: reward_model` they carry the reward model's scores of both responses
        (scored once per fit context), a tied pair's at their mean on that objective under `tied_gaps: zero`."""
        rewards = None
        if cfg.targets == "reward_model":
            if self._scores is None:
                self._scores = pair_rewards(self.reward, self.pairs)
            rewards = self._scores
            if cfg.tied_gaps == "zero":
                tied = (self.pairs.better < 0).unsqueeze(1).expand_as(rewards)
                rewards = torch.where(tied, rewards.mean(1, keepdim=True).expand_as(rewards), rewards)
        self.pairs.rewards = rewards  # set on every call: the trainer fits the scores wherever the pairs carry them
        return self.pairs

    def checkpoints(self, cfg: DPOConfig | RiCConfig, part: str = "") -> Checkpoints | None:
        """The checkpoints of one trainer of this fit (`part` names one of several, e.g. a Soups vertex); RiC
        checkpoints once per phase."""
        if self.checkpoint_dir is None:
            return None
        folder = self.checkpoint_dir / part if part else self.checkpoint_dir
        return Checkpoints(folder, getattr(cfg, "checkpoint_every", 1), cfg.keep_checkpoints)


def load_method(name: str) -> ModuleType:
    """A method's module (the method table's `module`): `fit(ctx, cfg, weights=None) -> (ConditionedPolicy,
    TrainResult)`; PPO methods run on Ray actors (pareto.distributed.ppo) and give build_policy /
    step_preferences / apply_preferences / save_policy instead of a working `fit`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return importlib.import_module(METHODS[name].module)


__all__ = ["ConditionedPolicy", "FitContext", "load_method", "pair_rewards"]
