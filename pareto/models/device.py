"""Where training and generation run: the device Ray gives a task, the autocast dtype, activation checkpointing.

A Ray task that asks for GPUs (`resources.gpus_per_task > 0`) sees exactly its own GPUs (Ray sets
CUDA_VISIBLE_DEVICES), so "the task's GPU" is always `cuda:0`. Everything else runs on the CPU.

Precision is autocast, not a weight dtype: the weights stay as loaded (`model.dtype`), and forward passes run in
bf16 where the device does it well (CUDA with bf16 support); log-probs and losses stay float32 (see
`pareto.models.policy.token_logprobs`). CPU autocast to bf16 works but is slow on most CPUs, so `auto` means fp32
there.

`Placement` carries the three choices as plain strings, so it pickles into Ray tasks and actors. Build it where the
work runs (inside the Ray task: it checks the local CUDA), or build it anywhere for CPU work::

    placement = Placement.from_config(cfg)
    model, tokenizer = load_policy(path, **placement.load_kwargs())
    with placement.context():
        ...  # forward passes (training, reference log-probs, generation) run under autocast
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# autocast dtypes a Placement may name (fp16 would need a GradScaler in training: not offered by the config)
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(RuntimeError):
    """A device request this process cannot serve, in one line naming the setting and the fix."""


def resolve_device(gpus_per_task: float) -> torch.device:
    """`cuda:0` (the first GPU Ray made visible to this task) when `gpus_per_task > 0`, else `cpu`."""
    if gpus_per_task < 0:
        raise DeviceError(f"resources.gpus_per_task={gpus_per_task} is negative; use 0 (CPU) or a GPU share > 0")
    if gpus_per_task == 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"resources.gpus_per_task={gpus_per_task:g} asks for a GPU but torch sees none here "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False: a CPU-only build or no visible GPU); "
            "set resources.gpus_per_task: 0 to run on CPU, or run on a GPU node with a CUDA build of torch")
    return torch.device("cuda", 0)


def precision_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of `model.precision` on `device`: None = fp32 (no autocast)."""
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None  # CPU bf16 autocast works but is slow on most CPUs
    raise ValueError(f"model.precision={precision!r}: choose one of {', '.join(PRECISIONS)}")


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """`torch.autocast(device.type, dtype)` when a dtype is set, else a context that does nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def no_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast off on `device` inside the block, whatever the caller set: scorers (MiniLM, reward heads, HF reward
    models) give the same numbers wherever they are called from, so a normaliser fit in one place fits in another."""
    kind = torch.device(device).type
    return torch.autocast(kind, enabled=False) if kind in ("cpu", "cuda") else contextlib.nullcontext()


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """torch.bfloat16 -> "bfloat16" (None stays None)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's (first) parameter: where its inputs must go."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def enable_checkpointing(model: Any) -> None:
    """Activation (gradient) checkpointing on a transformers model, non-reentrant, for training.

    Non-reentrant, so gradients reach parameters inside a checkpointed layer (LoRA/Panacea weights of a PEFT model
    wrapped around it later) even when the layer's inputs need no gradient: `enable_input_require_grads`, which
    reentrant checkpointing needs, is not relied on. Only training forwards checkpoint (`model.train()`, grad
    enabled). The KV cache is off for them (`config.use_cache = False`); `generate` reads its generation config,
    which keeps the cache on.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x: the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def place_model(model: Any, device: torch.device | str = "cpu", gradient_checkpointing: bool = False) -> Any:
    """Move a model to `device` and, when asked, turn on activation checkpointing for its training forwards."""
    model.to(torch.device(device))
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model


def is_checkpointing(model: Any) -> bool:
    """Whether activation checkpointing is on (either transformers spelling; PEFT models forward it)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        try:
            value = getattr(model, name)
        except AttributeError:
            continue
        return bool(value)
    return False


@dataclass(frozen=True)
class Placement:
    """Device, autocast dtype and checkpointing of one task's training/generation: strings only, picklable."""

    device: str = "cpu"              # a torch device string: "cpu", "cuda:0"
    dtype: str | None = None         # autocast dtype name ("bfloat16") or None for fp32
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        torch.device(self.device)  # a bad device string fails here, not in a worker halfway through
        if self.dtype is not None and self.dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"Placement dtype {self.dtype!r}: choose one of {sorted(AUTOCAST_DTYPES)} or None")

    @classmethod
    def from_config(cls, cfg: Any) -> Placement:
        """From `resources.gpus_per_task`, `model.precision` and `model.gradient_checkpointing`.

        Call it where the work runs (inside the Ray task): it checks that this process sees a GPU when one is asked
        for, and whether that GPU does bf16.
        """
        device = resolve_device(cfg.resources.gpus_per_task)
        model = cfg.model
        return cls(device=str(device), dtype=dtype_name(precision_dtype(getattr(model, "precision", "auto"), device)),
                   gradient_checkpointing=bool(getattr(model, "gradient_checkpointing", False)))

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return None if self.dtype is None else AUTOCAST_DTYPES[self.dtype]

    def context(self) -> contextlib.AbstractContextManager:
        """The autocast context for forward passes on this placement (a no-op for fp32)."""
        return autocast(self.torch_device, self.torch_dtype)

    def place(self, model: Any) -> Any:
        """`place_model` here: a model built in process (the tiny LM) moved and checkpointed like a loaded one."""
        return place_model(model, self.device, self.gradient_checkpointing)

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `load_policy` for this placement (device and checkpointing)."""
        return {"device": self.device, "gradient_checkpointing": self.gradient_checkpointing}
