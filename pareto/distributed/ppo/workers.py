"""The reward worker (the reward *vector* [B, K]) and the reference worker (π_ref log-probs for the KL penalty)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from pareto.distributed.bundle import Bundle
from pareto.distributed.ppo.common import sequence_logprobs, setup_worker, unpack_tmp
from pareto.models.policy import load_policy


def length_score(responses: Sequence[str]) -> torch.Tensor:
    """Rule-based conciseness: minus the number of words (scale-free: rewards are whitened per objective)."""
    return torch.tensor([-float(len(r.split())) for r in responses])


class RewardWorker:
    """Scores K objectives together: learned reward-model heads and rule-based objectives, column by column.

    sources: objective -> "learned" (the multi-head reward model, z-scored), "length" (rule) or "oracle" (the
    synthetic task's own rule). The learned model runs once per batch for all its objectives.
    """

    def __init__(self, reward: Bundle | None, objectives: Sequence[str], sources: dict[str, str], task: str | None,
                 task_seed: int, threads: int) -> None:
        setup_worker(threads, task_seed)
        self.objectives = tuple(objectives)
        self.sources = {o: sources.get(o, "learned") for o in self.objectives}
        self.learned = None
        if reward is not None:
            from pareto.models.reward import LearnedVectorReward

            self.learned = LearnedVectorReward.load(unpack_tmp(reward, "reward"))
            self.learned_index = [self.learned.names.index(o) for o in self.objectives]
        elif "learned" in self.sources.values():
            raise ValueError("objectives with source 'learned' need a trained reward model")
        self.task = None
        if task is not None:
            from pareto.data import load_task

            self.task = load_task(task, seed=task_seed)
            self.oracle_index = [self.task.objectives.index(o) for o in self.objectives]

    def ping(self) -> bool:
        return True

    def _learned(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.learned(prompts, responses)[:, self.learned_index]

    def _oracle(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        if self.task is None:
            raise ValueError("reward source 'oracle' needs a synthetic task")
        return self.task.oracle_scores(prompts, responses)[:, self.oracle_index]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> dict:
        """The reward vector PPO optimises: {"reward": [B, K], "seconds": float}."""
        start = time.perf_counter()
        used = set(self.sources.values())
        learned = self._learned(prompts, responses) if "learned" in used else None
        oracle = self._oracle(prompts, responses) if "oracle" in used else None
        length = length_score(responses) if "length" in used else None
        columns = []
        for k, name in enumerate(self.objectives):
            source = self.sources[name]
            columns.append(learned[:, k] if source == "learned" else oracle[:, k] if source == "oracle" else length)
        return {"reward": torch.stack(columns, dim=1).float(), "seconds": time.perf_counter() - start}

    def evaluate(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Evaluation scorers, as the DPO methods' fronts have them: the oracle and the learned reward model."""
        out = {}
        if self.task is not None:
            out["oracle"] = self._oracle(prompts, responses)
        if self.learned is not None:
            out["reward_model"] = self._learned(prompts, responses)
        return out


class ReferenceWorker:
    """The frozen SFT policy: per-token log-probs of rollouts, for the KL penalty."""

    def __init__(self, base: Bundle, seed: int, threads: int, device: str = "cpu") -> None:
        setup_worker(threads, seed)
        self.model, _ = load_policy(unpack_tmp(base, "base"))
        self.model.to(device).eval()
        self.device = device

    def ping(self) -> bool:
        return True

    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0) -> dict:
        start = time.perf_counter()
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
        return {"logp": sequence_logprobs(logits, input_ids.to(self.device), temperature).cpu(),
                "seconds": time.perf_counter() - start}
