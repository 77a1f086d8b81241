"""Rewarded Soups at inference: K per-objective LoRA adapters on one base, merged by λ.

Two merges (Ramé et al., NeurIPS 2023, interpolate the fine-tuned weights θ(λ) = Σ λ_i θ_i):

* ``delta`` (default, exact): ΔW(λ) = Σ_i λ_i s_i B_i A_i, built by concatenating ranks (PEFT's
  ``add_weighted_adapter(combination_type="cat")``: A = [λ_1 s_1 A_1; …], B = [B_1 … B_K], scaling 1).
* ``params``: average A and B separately, ΔW = s (Σ λ_i B_i)(Σ λ_i A_i), as the reference code does. It is not
  linear in λ; kept for comparison.

A merged adapter is built once per distinct λ and cached (a few), so switching back is free. Building and
activating an adapter changes the shared PEFT model, so generation holds a lock: concurrent calls are serialised.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from pareto.models.conditioned import read_policy_meta, write_policy_meta
from pareto.models.policy import generate, load_policy

SOUPS_MARKER = "pareto.soups.v1"


def objective_adapter(name: str) -> str:
    return f"obj_{name}"


def merge_adapters(model: PeftModel, adapters: Sequence[str], weights: Sequence[float], name: str,
                   merge: str = "delta") -> str:
    """Add adapter `name` = the λ-merge of `adapters` (see the module docstring); returns `name`."""
    lam = [float(w) for w in weights]
    if len(lam) != len(adapters):
        raise ValueError(f"{len(lam)} weights for {len(adapters)} adapters")
    if merge == "delta":
        keep = [(a, w) for a, w in zip(adapters, lam, strict=True) if w > 0]  # zero blocks add nothing
        model.add_weighted_adapter([a for a, _ in keep], [w for _, w in keep], name, combination_type="cat")
        return name
    if merge != "params":
        raise ValueError(f"unknown merge {merge!r}; choose 'delta' or 'params'")
    model.add_adapter(name, model.peft_config[adapters[0]])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                for part in (module.lora_A, module.lora_B):
                    part[name].weight.copy_(sum(w * part[a].weight for a, w in zip(adapters, lam, strict=True)))
    return name


class SoupsPolicy:
    """One LoRA adapter per objective; generate(prompts, λ) runs the λ-merged adapter (per distinct λ row)."""

    kind = "soups"

    def __init__(self, model: PeftModel, tokenizer, objectives: Sequence[str], merge: str = "delta",
                 cache_size: int = 8) -> None:
        self.model, self.tokenizer, self.objectives = model, tokenizer, tuple(objectives)
        self.adapters = [objective_adapter(o) for o in self.objectives]
        missing = [a for a in self.adapters if a not in model.peft_config]
        if missing:
            raise ValueError(f"model lacks the per-objective adapters {missing}")
        self.merge, self.cache_size = merge, cache_size
        self._merged: OrderedDict[tuple[float, ...], str] = OrderedDict()
        self._lock = threading.Lock()
        self._built = 0

    def merged(self, weights: Sequence[float]) -> str:
        """The adapter for λ, built on first use (call with the lock held)."""
        key = tuple(round(float(w), 6) for w in weights)
        if key in self._merged:
            self._merged.move_to_end(key)
            return self._merged[key]
        self._built += 1
        name = f"soup_{self._built}"
        merge_adapters(self.model, self.adapters, key, name, self.merge)
        self._merged[key] = name
        while len(self._merged) > self.cache_size:
            _, old = self._merged.popitem(last=False)
            self.model.delete_adapter(old)
        return name

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        weights = np.asarray(weights, dtype=np.float64)
        rows = np.tile(weights, (len(prompts), 1)) if weights.ndim == 1 else weights
        keys = [tuple(r.tolist()) for r in rows]
        out: list[str] = [""] * len(prompts)
        with self._lock:
            for key in dict.fromkeys(keys):  # one merged adapter and one generate call per distinct λ
                idx = [i for i, k in enumerate(keys) if k == key]
                self.model.set_adapter(self.merged(key), inference_mode=True)
                for i, text in zip(idx, generate(self.model, self.tokenizer, [prompts[i] for i in idx], **gen),
                                   strict=True):
                    out[i] = text
        return out

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path, selected_adapters=self.adapters)  # one sub-folder per adapter
        write_policy_meta(path, SOUPS_MARKER, self.objectives, adapters=self.adapters, merge=self.merge)

    @classmethod
    def load(cls, base_dir: str | Path, adapter_dir: str | Path, objectives: Sequence[str]) -> SoupsPolicy:
        adapter_dir = Path(adapter_dir)
        meta = read_policy_meta(adapter_dir, SOUPS_MARKER, objectives, "Rewarded Soups")
        base, tokenizer = load_policy(base_dir)
        model = None
        for name in meta["adapters"]:
            sub = adapter_dir / name
            if not (sub / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{sub}: adapter {name!r} is missing")
            if model is None:
                model = PeftModel.from_pretrained(base, str(sub), adapter_name=name)
            else:
                model.load_adapter(str(sub), adapter_name=name)
        model.eval()
        return cls(model, tokenizer, objectives, merge=meta["merge"])
