"""Distributed RLHF/PPO on Ray with vector rewards: MORLHF and Panacea-PPO.

Actors: rollout engines (transformers `generate`, or a vLLM server over HTTP with the policy synced as versioned
LoRA adapters), a reward worker scoring the reward vector [B, K] (learned MiniLM reward-model heads, Hugging Face
reward models and rule-based objectives together), a reference worker (KL), and trainer
ranks (torch DDP) in a placement group. The controller (`controller.py`) runs on the driver: it keeps the
reward a vector until λ scalarizes it at the advantage step, syncs weights to the engines with a version,
checkpoints atomically and resumes after a restart or an actor failure.
"""

from pareto.distributed.ppo.controller import PPORun, checkpoint_root, run_ppo_method

__all__ = ["PPORun", "checkpoint_root", "run_ppo_method"]
