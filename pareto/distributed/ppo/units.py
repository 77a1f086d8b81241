"""What a PPO run trains and where each model's training stands (`controller.py` drives them): its units (one model
per λ, or one conditioned model), the resumable prompt stream, the progress a checkpoint holds besides the tensors,
where the checkpoints live, and the run's task fit into the base model's context."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pareto.config import ExperimentConfig
from pareto.data.task import Task
from pareto.distributed.bundle import ModelRef, unpack
from pareto.distributed.stages import fitted_task
from pareto.objectives import RunningZScore
from pareto.objectives.rl import AdaptiveKLController

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")


class PromptStream:
    """Training prompts in a fresh seeded permutation per epoch; its position is two integers (resumable)."""

    def __init__(self, prompts: list[str], seed: int, epoch: int = 0, index: int = 0) -> None:
        self.prompts, self.seed, self.epoch, self.index = prompts, seed, epoch, index

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))

    def take(self, n: int) -> list[str]:
        out, order = [], self._order()
        while len(out) < n:
            if self.index == len(self.prompts):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            out.append(self.prompts[order[self.index]])
            self.index += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}


@dataclass
class Unit:
    """One model to train: MORLHF has one per λ, Panacea-PPO one for all λ."""

    index: int
    weights: list[float] | None  # the fixed λ of a per-weight unit
    grid: np.ndarray             # the λ it is evaluated at
    dir: Path
    seed: int


@dataclass
class UnitProgress:
    """Where a unit's training stands: what a checkpoint holds besides the tensors."""

    stream: PromptStream
    stats: RunningZScore                 # the running reward statistics every objective is whitened with
    kl_ctl: AdaptiveKLController
    history: list[dict] = field(default_factory=list)
    schedule: list[list[list[float]]] = field(default_factory=list)  # the distinct λ of every step: the λ schedule
    step: int = 0
    version: float = 0                   # the weight version the rollout engines hold
    seconds: float = 0.0                 # wall seconds of the steps
    cpu_seconds: float = 0.0             # CPU seconds the actors spent on them
    tokens: int = 0
    resumed_from: int = 0

    def checkpoint_state(self) -> dict:
        """The JSON part of a checkpoint (with the trainer's own state and the unit's identity added by the caller)."""
        return {"version": self.version, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "tokens": self.tokens, "data": self.stream.state(),
                "reward_stats": self.stats.state_dict(), "kl": self.kl_ctl.state_dict(), "history": self.history,
                "lambda_schedule": self.schedule}


def checkpoint_root(cfg: ExperimentConfig, method: str) -> Path:
    """Keyed by everything that determines the result, not by actor shares: a job may resume on another cluster."""
    digest = cfg.digest("seed", "task", "objectives", "model", "reward_model", f"methods.{method}",
                        "ppo.reward_sources", "evaluation")
    return cfg.state_path() / "checkpoints" / f"{method}-{digest}"


def task_of(cfg: ExperimentConfig, base: ModelRef) -> Task:
    """The run's task (`pareto.data.task`), a dataset's prompts fit into the base model's context: its tokenizer and
    config are read from `base` (bytes: only those files are written out, not the weights; a folder or hub id: read
    where it is)."""
    if cfg.task.dataset is None:
        return fitted_task(cfg)
    if isinstance(base, str):
        return fitted_task(cfg, base)
    with tempfile.TemporaryDirectory() as tmp:
        light = {k: v for k, v in base.items() if not k.endswith(WEIGHT_SUFFIXES)}
        return fitted_task(cfg, unpack(light, Path(tmp) / "base"))
