"""Conditioned policies ready to answer `generate(prompts, λ)`: the inference side of each method.

Training lives in `pareto.methods`; these classes only load, switch λ and generate, so serving (the UI,
`pareto query`) needs no training code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from peft import PeftModel

from pareto.config import METHODS
from pareto.models.policy import generate, load_policy
from pareto.models.svd_lora import export_lora, load_panacea, save_panacea, set_preference


class ConditionedPolicy(Protocol):
    """A policy that answers for any preference λ (one model for all λ, or a set of models)."""

    objectives: tuple[str, ...]

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        """weights: one λ [K] for all prompts, or one per prompt [B, K]."""
        ...

    def save(self, path: str | Path) -> None: ...


class PanaceaPolicy:
    """The conditioned policy: one model, λ set in place per call (per row when λ is [B, K]).

    λ is written on the adapter layers' device and prompts go to the model's: it generates wherever the model is.
    """

    kind = "panacea"  # recorded in the front's meta; serving loads the policy by it (see load_conditioned)

    def __init__(self, model, tokenizer, objectives: Sequence[str]) -> None:
        self.model, self.tokenizer, self.objectives = model, tokenizer, tuple(objectives)

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim == 1:
            weights = np.tile(weights, (len(prompts), 1))
        set_preference(self.model, weights)
        return generate(self.model, self.tokenizer, list(prompts), **gen)

    def save(self, path: str | Path) -> None:
        save_panacea(self.model, path)

    def export(self, weights: Sequence[float], path: str | Path) -> None:
        """A plain PEFT LoRA adapter at λ (loadable by PEFT and vLLM)."""
        export_lora(self.model, weights, path)

    @classmethod
    def load(cls, base_dir: str | Path, adapter_dir: str | Path, objectives: Sequence[str],
             device: str = "cpu") -> PanaceaPolicy:
        base, tokenizer = load_policy(base_dir, device=device)  # the adapter loads onto its base layers' device
        return cls(load_panacea(base, adapter_dir), tokenizer, objectives)


def adapter_name(index: int) -> str:
    return f"w{index}"


class PerWeightPolicy:
    """A set of adapters on one base model; λ picks the trained adapter nearest to it."""

    kind = "per_weight"

    def __init__(self, model: PeftModel, tokenizer, objectives: Sequence[str], weights: dict[str, np.ndarray]):
        self.model, self.tokenizer, self.objectives = model, tokenizer, tuple(objectives)
        self.weights = weights  # adapter name -> its λ

    def nearest(self, weights: np.ndarray) -> str:
        return min(self.weights, key=lambda name: float(np.abs(self.weights[name] - weights).sum()))

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        weights = np.asarray(weights, dtype=np.float64)
        rows = np.tile(weights, (len(prompts), 1)) if weights.ndim == 1 else weights
        names = [self.nearest(w) for w in rows]
        out: list[str] = [""] * len(prompts)
        for name in dict.fromkeys(names):  # one generate call per adapter, in first-seen order
            idx = [i for i, n in enumerate(names) if n == name]
            self.model.set_adapter(name)
            for i, text in zip(idx, generate(self.model, self.tokenizer, [prompts[i] for i in idx], **gen),
                               strict=True):
                out[i] = text
        return out

    def save(self, path: str | Path) -> None:
        for name in self.weights:
            self.model.save_pretrained(Path(path), selected_adapters=[name])

    @classmethod
    def load(cls, base_dir: str | Path, adapters: dict[str, tuple[Sequence[float], str | Path]],
             objectives: Sequence[str], device: str = "cpu") -> PerWeightPolicy:
        base, tokenizer = load_policy(base_dir, device=device)
        model = None
        for name, (_, path) in adapters.items():
            if model is None:
                model = PeftModel.from_pretrained(base, str(path), adapter_name=name)
            else:
                model.load_adapter(str(path), adapter_name=name)
        model.eval()
        return cls(model, tokenizer, objectives, {n: np.asarray(w, dtype=np.float64) for n, (w, _) in adapters.items()})


# Conditioned policy kinds (front.meta["policy_kind"], a method's name) -> "module:Class" with
# load(base_dir, adapter_dir, objectives), from the method table; imported lazily so serving pulls in only the kind
# it serves.
POLICY_KINDS: dict[str, str] = {name: spec.policy for name, spec in METHODS.items() if spec.policy}


POLICY_META = "meta.json"  # what kind of conditioned model a folder holds, for which objectives, and its settings


def write_policy_meta(path: str | Path, marker: str, objectives: Sequence[str], **settings: object) -> None:
    """A saved policy's meta.json: its marker (the kind of model), its objectives and its own settings."""
    meta = {"marker": marker, "objectives": list(objectives), **settings}
    (Path(path) / POLICY_META).write_text(json.dumps(meta, indent=2))


def read_policy_meta(adapter_dir: str | Path, marker: str, objectives: Sequence[str], what: str) -> dict:
    """A saved policy's meta.json, checked: the right kind of model (marker) for the same objectives."""
    meta_file = Path(adapter_dir) / POLICY_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("marker") != marker:
        raise ValueError(f"{adapter_dir} is not a {what} model (meta.json marker {marker!r} missing)")
    if tuple(meta.get("objectives", ())) != tuple(objectives):
        raise ValueError(f"{adapter_dir}: trained for objectives {meta.get('objectives')}, "
                         f"asked for {list(objectives)}")
    return meta


def load_conditioned(kind: str, base_dir: str | Path, adapter_dir: str | Path,
                     objectives: Sequence[str]) -> ConditionedPolicy:
    """Load a saved conditioned policy of `kind` (one model for every λ) onto the base model."""
    import importlib

    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown conditioned policy kind {kind!r}; known: {sorted(POLICY_KINDS)}")
    module, _, name = POLICY_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name).load(base_dir, adapter_dir, objectives)
