"""The interface every generation backend shares: `Generator`, `Completion`, and the helpers each backend uses.

Standard library only: `vllm_offline` imports it inside the separate vLLM environment, which has neither the
project's dependencies nor its transformers version. The backends import this module, not the package, so the
package (which picks a backend by name) and its backends do not import each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

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
    matters with `greedy=False`; `repetition_penalty` (1 = none) is the CTRL penalty both HF and vLLM apply."""

    def generate(self, prompts: Sequence[str], adapter: AdapterArg = None, max_new_tokens: int = 48,
                 greedy: bool = True, temperature: float = 1.0, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> list[str]: ...


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
