"""The reward worker (the reward *vector* [B, K]) and the reference worker (π_ref log-probs for the KL penalty)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pareto.config import HFRewardModelConfig
from pareto.data.task import TaskOracle
from pareto.distributed.bundle import ModelRef
from pareto.distributed.ppo.common import actor_device, sequence_logprobs, setup_worker, unpack_tmp
from pareto.models.policy import load_policy
from pareto.models.scorer import SourcedReward


class RewardWorker:
    """Scores K objectives together, column by column, through `pareto.models.scorer`.

    Training (`score`): each objective by its PPO source (`sources`: `ExperimentConfig.reward_sources()` overridden
    by `ppo.reward_sources`): "learned" (a head of the run's MiniLM reward model), "hf" (the `reward_model.hf` entry
    scoring it), "length" (`scorer.length_score`) or "oracle" (the synthetic task's rule). The columns are raw:
    PPO whitens every objective with its own running statistics, so a column's scale does not matter. Each model runs
    once per batch for all its objectives.

    Evaluation (`evaluate`): the scorers of the DPO methods' fronts: the task's oracle when it has one, and
    "reward_model", the run's saved `SourcedReward` (`reward`, a saved folder as bytes or by path) with its frozen
    normaliser, so a PPO front and the base point are scored exactly like every other front.
    """

    def __init__(self, reward: ModelRef | None, objectives: Sequence[str], sources: dict[str, str],
                 oracle: TaskOracle | None, seed: int, threads: int, hf: Sequence[HFRewardModelConfig] = (),
                 device: str = "cpu") -> None:
        setup_worker(threads, seed)
        device = actor_device(device, "reward")
        self.objectives = tuple(objectives)
        self.sources = {o: sources.get(o, "learned") for o in self.objectives}
        path = Path(unpack_tmp(reward, "reward")) if reward is not None else None
        self.scorer = SourcedReward.load(path, device=device) if path is not None else None
        self.oracle = oracle
        if oracle is not None and tuple(oracle.names) != self.objectives:
            raise ValueError(f"the task's oracle scores {oracle.names}, not the objectives {self.objectives}")
        if "oracle" in self.sources.values() and oracle is None:
            raise ValueError("reward source 'oracle' needs a synthetic task (one with an oracle)")
        self.ruled = tuple(o for o in self.objectives if self.sources[o] != "oracle")
        self.train = self._training_reward(path, hf, device) if self.ruled else None

    def _training_reward(self, path: Path | None, hf: Sequence[HFRewardModelConfig], device: str) -> SourcedReward:
        """The scorer of the non-oracle training columns: the run's own when it takes them from the same sources (one
        copy of each reward model), else one built for the PPO sources (sharing the run's learned heads)."""
        wanted = {o: self.sources[o] for o in self.ruled}
        if self.scorer is not None and all(self.scorer.sources.get(o) == s for o, s in wanted.items()):
            return self.scorer
        learned = None
        if "learned" in wanted.values():
            learned = self.scorer.learned if self.scorer is not None else None
            if learned is None and path is not None and (path / "heads.safetensors").is_file():
                from pareto.models.reward import LearnedVectorReward, TextEncoder

                learned = LearnedVectorReward.load(path, encoder=TextEncoder(device=device))
        return SourcedReward(self.ruled, wanted, learned, hf, device=device)  # learned missing: one-line error

    def ping(self) -> bool:
        return True

    def scorer_names(self) -> list[str]:
        """The evaluation scorers this worker gives (`evaluate`'s keys)."""
        return (["oracle"] if self.oracle is not None else []) + (["reward_model"] if self.scorer is not None else [])

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> dict:
        """The reward vector PPO optimises: {"reward": [B, K] float32, "seconds": float}."""
        start = time.perf_counter()
        columns: dict[str, torch.Tensor] = {}
        if self.train is not None:
            raw = self.train.raw(prompts, responses)
            columns.update({o: raw[:, self.train.names.index(o)] for o in self.ruled})
        if len(self.ruled) < len(self.objectives):
            oracle = self.oracle(prompts, responses)
            columns.update({o: oracle[:, k] for k, o in enumerate(self.objectives) if o not in columns})
        reward = torch.stack([columns[o] for o in self.objectives], dim=1).float()
        return {"reward": reward, "seconds": time.perf_counter() - start}

    def evaluate(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Evaluation scores per scorer, [B, K] each, as the DPO methods' fronts have them."""
        out = {}
        if self.oracle is not None:
            out["oracle"] = self.oracle(prompts, responses).float()
        if self.scorer is not None:
            out["reward_model"] = self.scorer(prompts, responses)
        return out


class ReferenceWorker:
    """The frozen SFT policy: per-token log-probs of rollouts, for the KL penalty."""

    def __init__(self, base: ModelRef, seed: int, threads: int, device: str = "cpu",
                 load_options: dict | None = None) -> None:
        setup_worker(threads, seed)
        self.device = actor_device(device, "reference")
        self.model, _ = load_policy(unpack_tmp(base, "base"), **(load_options or {}), device=self.device)

    def ping(self) -> bool:
        return True

    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0) -> dict:
        start = time.perf_counter()
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        return {"logp": sequence_logprobs(logits, input_ids.to(self.device), temperature).cpu(),
                "seconds": time.perf_counter() - start}
