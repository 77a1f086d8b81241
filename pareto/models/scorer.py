"""The experiment's reward model: each objective scored by its source, one frozen z-score normaliser over all.

Sources (`ExperimentConfig.reward_sources`): `learned` (a head of the multi-head MiniLM reward model trained on the
dataset's labels), `hf` (a Hugging Face sequence-classification reward model of `reward_model.hf`) or `length` (the
rule "shorter is better"). This is what scores every front ("reward_model" scorer), what RiC and MODPO train on and
what the UI scores answers with. It is saved as the learned heads (safetensors) plus `scorer.json` (sources, the
normaliser, the HF reward models' specs: they are loaded by id or path, never copied).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from pareto.config import HFRewardModelConfig
from pareto.models.reward import LearnedVectorReward
from pareto.objectives.base import RunningZScore, ZScoredReward

SCORER_FILE = "scorer.json"


def length_score(responses: Sequence[str]) -> torch.Tensor:
    """Rule-based conciseness: minus the number of words (scale-free: the normaliser z-scores it)."""
    return torch.tensor([-float(len(r.split())) for r in responses])


class SourcedReward(ZScoredReward):
    """VectorReward `[B, K]` in `names` order; `raw` is unnormalised, `__call__` z-scored by the frozen normaliser."""

    def __init__(self, names: Sequence[str], sources: dict[str, str], learned: LearnedVectorReward | None = None,
                 hf_specs: Sequence[HFRewardModelConfig] = (), normalizer: RunningZScore | None = None,
                 device: str = "cpu") -> None:
        self.names = tuple(names)
        self.sources = {n: sources.get(n, "learned") for n in self.names}
        self.learned = learned
        if learned is None and "learned" in self.sources.values():
            raise ValueError("objectives with source 'learned' need a trained reward model")
        self.hf_specs = [s for s in hf_specs if set(s.objectives) & {n for n, v in self.sources.items() if v == "hf"}]
        self.device = device
        self._hf = None  # loaded on first use: an HF reward model can be large
        self.normalizer = normalizer or (learned.normalizer if learned is not None and self._all_learned()
                                         else RunningZScore(names=self.names))

    def _all_learned(self) -> bool:
        return self.learned is not None and self.learned.names == self.names and \
            set(self.sources.values()) == {"learned"}

    def _hf_reward(self):
        if self._hf is None:
            from pareto.models.hf_reward import HFRewardModel, HFVectorReward

            names = [n for n in self.names if self.sources[n] == "hf"]
            self._hf = HFVectorReward([HFRewardModel(s, device=self.device) for s in self.hf_specs], names)
        return self._hf

    @torch.no_grad()
    def raw(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        used = set(self.sources.values())
        learned = self.learned.raw(prompts, responses) if "learned" in used else None
        hf = self._hf_reward().raw(prompts, responses) if "hf" in used else None
        hf_names = [n for n in self.names if self.sources[n] == "hf"]
        columns = []
        for name in self.names:
            source = self.sources[name]
            if source == "learned":
                columns.append(learned[:, self.learned.names.index(name)])
            elif source == "hf":
                columns.append(hf[:, hf_names.index(name)])
            else:
                columns.append(length_score(responses))
        return torch.stack(columns, dim=1).float()



    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if self.learned is not None:
            self.learned.save(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / SCORER_FILE).write_text(json.dumps({
            "names": list(self.names), "sources": self.sources, "normalizer": self.normalizer.state_dict(),
            "hf": [s.model_dump(mode="json") for s in self.hf_specs]}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> SourcedReward:
        """A saved scorer; a folder with only learned heads (older runs) is the all-learned scorer."""
        path = Path(path)
        meta_file = path / SCORER_FILE
        if not meta_file.is_file():
            learned = LearnedVectorReward.load(path, device=device)
            return cls(learned.names, {}, learned, device=device)
        meta = json.loads(meta_file.read_text())
        sources = meta["sources"]
        learned = (LearnedVectorReward.load(path, device=device)
                   if "learned" in sources.values() else None)
        specs = [HFRewardModelConfig.model_validate(s) for s in meta.get("hf", [])]
        return cls(meta["names"], sources, learned, specs, RunningZScore.from_state_dict(meta["normalizer"]),
                   device=device)
