"""The reward worker (the reward *vector* [B, K]) and the reference worker (π_ref log-probs for the KL penalty)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from pareto.config import ExperimentConfig, HFRewardModelConfig
from pareto.distributed.bundle import Bundle
from pareto.distributed.ppo.common import sequence_logprobs, setup_worker, unpack_tmp
from pareto.models.policy import load_policy


def length_score(responses: Sequence[str]) -> torch.Tensor:
    """Rule-based conciseness: minus the number of words (scale-free: rewards are whitened per objective)."""
    return torch.tensor([-float(len(r.split())) for r in responses])


class RewardWorker:
    """Scores K objectives together: learned reward models and rule-based objectives, column by column.

    sources: objective -> "learned" (the multi-head MiniLM reward model, z-scored), "hf" (a Hugging Face
    sequence-classification reward model of `reward_model.hf`, raw scores), "length" (rule) or "oracle" (the
    synthetic task's own rule); see `reward_sources`. Each model runs once per batch for all its objectives.
    """

    def __init__(self, reward: Bundle | None, objectives: Sequence[str], sources: dict[str, str], task: str | None,
                 task_seed: int, threads: int, hf: Sequence[HFRewardModelConfig] = (), device: str = "cpu") -> None:
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
        self.hf = None
        self.hf_names = [o for o in self.objectives if self.sources[o] == "hf"]
        if self.hf_names:
            from pareto.models.hf_reward import HFRewardModel, HFVectorReward

            # only the entries that score an hf-sourced objective are loaded (a model can be large)
            specs = [spec for spec in hf if set(spec.objectives) & set(self.hf_names)]
            self.hf = HFVectorReward([HFRewardModel(spec, device=device) for spec in specs], self.hf_names)
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

    def _hf(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Raw HF reward-model scores per hf-sourced objective (PPO whitens every objective anyway)."""
        raw = self.hf.raw(prompts, responses)
        return {name: raw[:, j] for j, name in enumerate(self.hf_names)}

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> dict:
        """The reward vector PPO optimises: {"reward": [B, K], "seconds": float}."""
        start = time.perf_counter()
        used = set(self.sources.values())
        learned = self._learned(prompts, responses) if "learned" in used else None
        oracle = self._oracle(prompts, responses) if "oracle" in used else None
        hf = self._hf(prompts, responses) if "hf" in used else None
        length = length_score(responses) if "length" in used else None
        columns = []
        for k, name in enumerate(self.objectives):
            source = self.sources[name]
            columns.append(learned[:, k] if source == "learned" else oracle[:, k] if source == "oracle"
                           else hf[name] if source == "hf" else length)
        return {"reward": torch.stack(columns, dim=1).float(), "seconds": time.perf_counter() - start}

    def evaluate(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Evaluation scorers, as the DPO methods' fronts have them: the oracle and the reward models.

        "reward_model" takes each objective from the HF reward model that scores it (raw, as a fixed reference
        point expects) when its source is hf, else from the learned model; it is left out when some objective
        has neither.
        """
        out = {}
        if self.task is not None:
            out["oracle"] = self._oracle(prompts, responses)
        learned = self._learned(prompts, responses) if self.learned is not None else None
        hf = self._hf(prompts, responses) if self.hf is not None else {}
        if learned is not None or len(hf) == len(self.objectives):
            out["reward_model"] = torch.stack([hf[name] if name in hf else learned[:, k]
                                               for k, name in enumerate(self.objectives)], dim=1).float()
        return out


def reward_sources(cfg: ExperimentConfig) -> dict[str, str]:
    """objective -> reward source: `ppo.reward_sources`, else hf for an objective a `reward_model.hf` entry scores,
    else learned."""
    by_hf = {name for rm in cfg.reward_model.hf for name in rm.objectives}
    return {o: cfg.ppo.reward_sources.get(o, "hf" if o in by_hf else "learned") for o in cfg.objectives}


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
