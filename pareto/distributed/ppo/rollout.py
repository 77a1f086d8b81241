"""Rollout engines: generate with the policy at an explicit weight version, λ injected with the batch.

`TransformersRolloutEngine` (the default, CPU or GPU, in `transformers_engine.py`) and `VLLMRolloutEngine`
(`ppo.engine: vllm`, in `vllm_engine.py`: a vLLM OpenAI-compatible server reached over HTTP, weights synced as
versioned LoRA adapters) share one interface:

    load_weights(version, tensors) -> version   the trainer's trainable weights, tagged with a version
    generate(prompts, weights, ...) -> dict     token ids, texts, per-token log-probs, and the version used
    save_policy() -> bundle                     the current policy as a saved adapter (bytes)
    close()                                     free what the engine holds outside its process (a vLLM server)
"""

from __future__ import annotations

from pareto.distributed.ppo.transformers_engine import TransformersRolloutEngine

__all__ = ["TransformersRolloutEngine", "engine_class"]


def engine_class(name: str) -> type:
    """ppo.engine -> the rollout engine class (vLLM's is imported only when asked for)."""
    if name == "vllm":
        from pareto.distributed.ppo.vllm_engine import VLLMRolloutEngine

        return VLLMRolloutEngine
    return TransformersRolloutEngine
