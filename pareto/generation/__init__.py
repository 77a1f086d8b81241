"""Generation backends behind one interface: transformers+PEFT in process (default), a vLLM offline engine, and
an OpenAI-compatible vLLM server.

A front is served as K LoRA adapters on one base model (see `pareto.export`); a backend answers
`generate(prompts, adapter)` where `adapter` names one of them (None = the base model), or gives one name per
prompt so that one batch mixes preferences.

This module is deliberately light (standard library only): `vllm_offline` runs inside the separate vLLM
environment, which has neither the project's dependencies nor its transformers version. The shared interface
lives in `pareto.generation.interface` (re-exported here), which the backends import; the backends are imported
lazily by `make_generator`.
"""

from __future__ import annotations

from pareto.generation.interface import AdapterArg, Completion, Generator, cut_at_eos, per_prompt_adapters

BACKENDS = ("hf", "vllm-server", "vllm-offline")



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


__all__ = ["BACKENDS", "AdapterArg", "Completion", "Generator", "cut_at_eos",
           "make_generator", "per_prompt_adapters"]
