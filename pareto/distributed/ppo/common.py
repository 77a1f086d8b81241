"""Helpers every PPO actor shares: thread pinning, its device, models from bundles or by reference, per-token
log-probs, batch collation."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from pareto.distributed.bundle import ModelRef, unpack
from pareto.models.device import DeviceError, resolve_device


def setup_worker(threads: int, seed: int) -> None:
    # Ray reuses worker processes and torch reads OMP_NUM_THREADS only once: pin threads explicitly.
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)


def actor_device(device: str, role: str) -> str:
    """The torch device an actor computes on: "cpu", or its first visible GPU when its share asks for one (Ray sets
    CUDA_VISIBLE_DEVICES per actor, so that is `cuda:0`); a GPU share on a node without one is a one-line
    `DeviceError` naming the setting (`pareto.models.device.resolve_device`)."""
    if not str(device).startswith("cuda"):
        return "cpu"
    try:
        return str(resolve_device(1.0))
    except DeviceError as err:
        raise DeviceError(str(err).replace("resources.gpus_per_task", f"ppo.{role}.gpus")) from None


UNPACK_ROOT = Path(tempfile.gettempdir()) / "pareto-ppo"


def is_hub_id(ref: str) -> bool:
    """A model named by its Hugging Face id (owner/name), not a folder: every actor loads it itself."""
    path = Path(ref)
    return not path.exists() and not path.is_absolute() and not ref.startswith((".", "~")) and ref.count("/") <= 1


def unpack_tmp(bundle: ModelRef, name: str) -> Path | str:
    """Where an actor loads a model from: a bundle (bytes) unpacked into a private temp dir that lives as long as
    the actor process; a reference (a folder every node reads, or a hub id) as it is, never copied.

    The dir is named after the process id and removed at exit; an actor killed with SIGKILL cannot clean up, so
    every new unpack first removes the dirs of processes that are gone (else each restart leaks a model copy)."""
    if isinstance(bundle, str):
        return bundle if is_hub_id(bundle) else unpack(bundle, bundle)  # a folder: checked, returned as it is
    UNPACK_ROOT.mkdir(parents=True, exist_ok=True)
    for stale in UNPACK_ROOT.iterdir():
        pid = stale.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{name}-", dir=UNPACK_ROOT))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return unpack(bundle, root / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


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
