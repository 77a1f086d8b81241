"""Helpers every PPO actor shares: thread pinning, models from bundles, per-token log-probs, batch collation."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from pareto.distributed.bundle import Bundle, unpack


def setup_worker(threads: int, seed: int) -> None:
    # Ray reuses worker processes and torch reads OMP_NUM_THREADS only once: pin threads explicitly.
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)


def unpack_tmp(bundle: Bundle, name: str) -> Path:
    """A bundle unpacked into a private temp dir that lives as long as the actor process."""
    root = Path(tempfile.mkdtemp(prefix=f"pareto-ppo-{name}-"))
    return unpack(bundle, root / name)


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log p(token_{t+1} | ≤ t) in the shifted layout: [B, T-1]."""
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def collate(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int
            ) -> dict[str, torch.Tensor]:
    """Prompt + response token ids, right-padded, with the response mask in the shifted layout [B, T-1].

    Training uses the generated token ids themselves (re-tokenising decoded text can give other tokens).
    """
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(rows[i])
        attention[i, :n] = 1
        mask[i, len(p):n] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention, "mask": mask[:, 1:]}
