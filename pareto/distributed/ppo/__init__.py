"""Distributed RLHF/PPO on Ray with vector rewards: MORLHF and Panacea-PPO.

Actors: rollout engines (transformers `generate`, or a vLLM server over HTTP with the policy synced as versioned
LoRA adapters), a reward worker scoring the reward vector [B, K] through `pareto.models.scorer` (learned MiniLM
reward-model heads, Hugging Face reward models and rule-based objectives together; the fronts by the run's saved
reward model, like every other method's), a reference worker (KL), and trainer ranks (torch DDP) in a placement
group. Every actor loads the base model on its own device, from bytes or by reference (a shared folder, a hub id).
Prompts come from the run's task (`pareto.data.task`: tiny-hh or a real dataset, fit into the model's context).
The controller (`controller.py`) runs on the driver: it keeps the reward a vector until λ scalarizes it at the
advantage step, syncs weights to the engines with a version, checkpoints atomically and resumes after a restart or an
actor failure.
"""

__all__ = ["PPORun", "checkpoint_root", "run_ppo_method"]


def __getattr__(name: str) -> object:
    # The controller (MLflow, the pipeline stages) is the driver's; an actor process imports this package for its
    # class's module (workers, trainer, rollout engines) and must not pay for it: ~2 s of imports per actor.
    if name in __all__:
        from pareto.distributed.ppo import controller

        return getattr(controller, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
