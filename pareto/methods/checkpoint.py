"""Trainer checkpoints: atomic, the last N kept, resumed when the same config runs again.

A checkpoint is one folder `step-000050/` holding everything the next step depends on, so a resumed run is
bit-identical to an uninterrupted one on the CPU:

- `tensors.safetensors`: the trainable parameters, the best state kept for early stopping, torch's RNG state;
- `optimizer.pt`: the optimizer's state (read back with `torch.load(weights_only=True)`: tensors and numbers only);
- `state.json`: the step, the numpy RNG state (data order and λ samples), the sampler's own state (MAH-DPO's
  per-objective queues), early-stopping state, the history so far and the time spent.

It is written as `.step-000050.tmp/` and renamed into place: a kill mid-write leaves no folder that looks
finished, and the previous checkpoint stays. Older checkpoints beyond `keep` are removed after the rename.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@dataclass
class TrainerState:
    """What a trainer restores: tensors by name (parameters `param/…`, best state `best/…`, `rng/torch`), the
    optimizer's state dict, and a JSON-able dict of the rest."""

    step: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict
    state: dict[str, Any]


class Checkpoints:
    """The checkpoints of one trainer under `folder` (one folder per trainer: a method, a λ, a Soups vertex)."""

    def __init__(self, folder: Path, every: int, keep: int = 2) -> None:
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint_every={every} and keep_checkpoints={keep} must both be >= 1")
        self.folder, self.every, self.keep = Path(folder), every, keep

    def due(self, step: int, last: bool) -> bool:
        return step % self.every == 0 or last

    def steps(self) -> list[int]:
        """The finished checkpoints' steps, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name.split("-")[1]) for p in self.folder.glob("step-*")
                      if p.is_dir() and (p / "state.json").is_file())

    def save(self, trainer: TrainerState) -> Path:
        if "step" in trainer.state:
            raise ValueError("TrainerState.state: 'step' is the checkpoint's own key; give the field another name")
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"step-{trainer.step:06d}"
        for stale in self.folder.glob(".step-*.tmp"):  # half-written by a killed run: never read, cleared here
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.folder / f".step-{trainer.step:06d}.tmp"
        tmp.mkdir()
        save_file({k: v.detach().contiguous().cpu() for k, v in trainer.tensors.items()},
                  str(tmp / "tensors.safetensors"))
        torch.save(trainer.optimizer, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": trainer.step, **trainer.state}, default=float),
                                         encoding="utf-8")
        if final.exists():  # the same step again (a rerun that had finished it): replace it whole
            shutil.rmtree(final)
        tmp.rename(final)
        for old in self.steps()[:-self.keep]:
            shutil.rmtree(self.folder / f"step-{old:06d}", ignore_errors=True)
        return final

    def latest(self, device: torch.device | str = "cpu") -> TrainerState | None:
        """The newest finished checkpoint, or None. A damaged one is an error naming it (delete it to fall back to
        the one before)."""
        steps = self.steps()
        if not steps:
            return None
        path = self.folder / f"step-{steps[-1]:06d}"
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
            tensors = load_file(str(path / "tensors.safetensors"), device=str(device))
            optimizer = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001 (any damage reads as one line naming the folder)
            raise RuntimeError(f"checkpoint {path} is damaged ({type(err).__name__}: {str(err)[:120]}); delete that "
                               "folder to resume from the one before, or the whole folder to start over") from None
        return TrainerState(int(state.pop("step")), tensors, optimizer, state)
