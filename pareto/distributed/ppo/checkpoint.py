"""Atomic PPO checkpoints: safetensors for tensors, JSON for everything else (never pickle).

Layout under a unit's directory (one unit = one model being trained)::

    step-000010/  policy.safetensors critic.safetensors optimizer.safetensors rng.safetensors state.json
    latest        the name of the newest complete checkpoint (replaced atomically)
    result/       the finished unit: result.json + adapter/ (written once, at the end)

A checkpoint is written into a hidden temp directory and renamed into place, and `latest` is replaced with
os.replace, so a kill at any moment leaves the previous checkpoint intact and `latest` pointing at it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pareto.io import atomic_write_text

FORMAT = "pareto.ppo.checkpoint.v1"
TENSOR_FILES = ("policy", "critic", "optimizer", "rng")


# ---- optimizer state as (tensors, JSON) ---------------------------------------------------------------------
def flatten_optimizer(state: dict, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state_dict -> flat {name: tensor} plus a JSON-able description of the rest."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for index, slots in state["state"].items():
        entry = {}
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                key = f"{prefix}.{index}.{slot}"
                tensors[key] = value.detach().cpu().contiguous()
                entry[slot] = {"tensor": key}
            else:
                entry[slot] = {"value": value}
        meta["state"][str(index)] = entry
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for index, slots in meta["state"].items():
        state[int(index)] = {slot: tensors[v["tensor"]].clone() if "tensor" in v else v["value"]
                             for slot, v in slots.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


# ---- writing and reading ------------------------------------------------------------------------------------
def save_checkpoint(unit_dir: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict,
                    keep: int = 2) -> Path:
    """Write step-NNNNNN atomically, point `latest` at it, keep the newest `keep` checkpoints."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = unit_dir / name
    tmp = Path(tempfile.mkdtemp(dir=unit_dir, prefix=f".{name}."))
    try:
        for group, values in tensors.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in values.items()}, str(tmp / f"{group}.safetensors"))
        # inside the hidden temp dir: it becomes visible only with the rename below
        (tmp / "state.json").write_text(json.dumps({"format": FORMAT, "step": step, **state}))
        if final.exists():  # left by a run killed before `latest` moved to it (so `latest` is older): replace it
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(unit_dir / "latest", name)
    for old in sorted(p for p in unit_dir.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(unit_dir: Path) -> Path | None:
    pointer = unit_dir / "latest"
    if not pointer.is_file():
        return None
    path = unit_dir / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    state = json.loads((path / "state.json").read_text())
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pareto PPO checkpoint (format {state.get('format')!r}, expected {FORMAT})")
    tensors = {g: load_file(str(path / f"{g}.safetensors")) for g in TENSOR_FILES
               if (path / f"{g}.safetensors").is_file()}
    return tensors, state


def save_result(unit_dir: Path, result: dict, adapter: dict[str, bytes]) -> None:
    """The finished unit (its evaluation and adapter), renamed into place in one step."""
    from pareto.distributed.bundle import unpack

    payload = {k: v for k, v in result.items() if k != "adapter"}
    bundle = {"result.json": json.dumps(payload).encode(), **{f"adapter/{k}": v for k, v in adapter.items()}}
    unpack(bundle, unit_dir / "result")


def load_result(unit_dir: Path) -> dict | None:
    from pareto.distributed.bundle import pack

    path = unit_dir / "result"
    if not (path / "result.json").is_file():
        return None
    result = json.loads((path / "result.json").read_text())
    result["adapter"] = pack(path / "adapter")
    return result
