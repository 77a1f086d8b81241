"""Generation backends behind one interface: transformers+PEFT in process (default), a vLLM offline engine, and
an OpenAI-compatible vLLM server.

A front is served as K LoRA adapters on one base model (see `pareto.export`); a backend answers
`generate(prompts, adapter)` where `adapter` names one of them (None = the base model), or gives one name per
prompt so that one batch mixes preferences.

This module is deliberately light (standard library only): `vllm_offline` runs inside the separate vLLM
environment, which has neither the project's dependencies nor its transformers version. The backends are
imported lazily by `make_generator`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

BACKENDS = ("hf", "vllm-server", "vllm-offline")

# Methods whose models are LoRA deltas on the base model, hence servable by vLLM's multi-LoRA engine, and how a
# front point becomes a plain adapter (see pareto.export).
LORA_METHODS = {"panacea": "panacea-at-lambda", "per_weight_dpo": "per-weight", "soups": "soup"}
# Methods whose λ does not live in LoRA weights: vLLM cannot express them, transformers serves them.
NOT_LORA_REASONS = {
    "mah_dpo": "MAH-DPO mixes per-objective output heads by λ (logits = Σ λ_h logits_h), which is not a LoRA "
               "adapter, so it is served with transformers",
    "ric": "RiC conditions on desired rewards written into the prompt, not on LoRA weights, so it is served with "
           "transformers",
}

AdapterArg = str | None | Sequence[str | None]


@dataclass
class Completion:
    """One generated answer: the text (stripped, special tokens removed) and the generated token ids (without
    the end-of-sequence token)."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    adapter: str | None = None


@runtime_checkable
class Generator(Protocol):
    """What every backend offers. `adapter`: one name for all prompts, None for the base model, or one entry per
    prompt (a mixed batch). Greedy decoding is deterministic and equal across backends; `temperature` only
    matters with `greedy=False`."""

    def generate(self, prompts: Sequence[str], adapter: AdapterArg = None, max_new_tokens: int = 48,
                 greedy: bool = True, temperature: float = 1.0) -> list[str]: ...


def per_prompt_adapters(adapter: AdapterArg, n: int) -> list[str | None]:
    """`adapter` as one entry per prompt; a list must have one entry per prompt."""
    if adapter is None or isinstance(adapter, str):
        return [adapter] * n
    names = list(adapter)
    if len(names) != n:
        raise ValueError(f"adapter has {len(names)} entries for {n} prompts; give one name (or None) per prompt")
    return names


def cut_at_eos(token_ids: Sequence[int], eos_ids: Sequence[int] | int | None) -> list[int]:
    """The generated ids up to (without) the first end-of-sequence id: what both HF and vLLM actually produced."""
    ids = list(token_ids)
    stops = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids or ())
    for i, t in enumerate(ids):
        if t in stops:
            return ids[:i]
    return ids


def make_generator(backend: str, **kwargs: object) -> Generator:
    """A backend by name: hf (HFGenerator), vllm-server (VLLMServerGenerator), vllm-offline (VLLMOfflineGenerator,
    only where `vllm` is importable)."""
    if backend == "hf":
        from pareto.generation.hf import HFGenerator

        return HFGenerator(**kwargs)  # type: ignore[arg-type]
    if backend == "vllm-server":
        from pareto.generation.vllm_server import VLLMServerGenerator

        return VLLMServerGenerator(**kwargs)  # type: ignore[arg-type]
    if backend == "vllm-offline":
        from pareto.generation.vllm_offline import VLLMOfflineGenerator

        return VLLMOfflineGenerator(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown generation backend {backend!r}; use one of {list(BACKENDS)}")


__all__ = ["BACKENDS", "Completion", "Generator", "LORA_METHODS", "NOT_LORA_REASONS", "cut_at_eos",
           "make_generator", "per_prompt_adapters"]
