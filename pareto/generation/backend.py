"""Serving a tracked run's front through vLLM: the `serving:` config of a run, and the backend that turns a
chosen front point into a plain LoRA adapter and asks vLLM for the answer.

`pareto.serving.ServedRun` uses this when `serving.backend` is vllm-server or vllm-offline and the method is LoRA
(Panacea at λ, per-weight models, Rewarded Soups). MAH-DPO head mixing and RiC prompt conditioning are not LoRA:
they stay on transformers, and the choice's reason says so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from pareto.config import spec_for
from pareto.generation import Generator


def serving_config(run: Any) -> Any:
    """The run's ServingConfig: the one given to ServedRun, else the run's logged `serving.*` params, else hf."""
    from pareto.config import ServingConfig

    if run.serving is not None:
        return run.serving
    logged = {key.removeprefix("serving."): value for key, value in run.params.items()
              if key.startswith("serving.") and value not in ("None", "")}
    try:
        run.serving = ServingConfig(**logged)
    except ValueError:  # a run logged by another version: transformers is always right
        run.serving = ServingConfig()
    return run.serving


def _kind(run: Any, method: str) -> str:
    return str(run.fronts[method].meta.get("policy_kind", method)) if method in run.fronts else method


def is_lora_method(run: Any, method: str) -> bool:
    """Whether the method's models are LoRA deltas on the base model, hence servable by vLLM."""
    spec = spec_for(method, _kind(run, method))
    if spec is not None:
        return spec.export is not None
    return method in run.fronts and not run.is_conditioned(method)  # per-weight models are plain LoRA adapters


def serving_note(run: Any, method: str) -> str:
    """What to append to a Choice's reason about how the answer is generated ("" for the default)."""
    backend = serving_config(run).backend
    spec = spec_for(method, _kind(run, method))
    reason = spec.not_lora if spec is not None and spec.export is None else ""
    if reason:
        return f"; {reason}" + (f" (serving.backend={backend} applies to LoRA methods only)" if backend != "hf"
                                else "")
    if backend != "hf" and is_lora_method(run, method):
        return f"; answered by vLLM ({backend}) from a plain LoRA adapter of this point"
    return ""


class LoRABackend:
    """A vLLM generator plus the adapters it needs, exported on demand into the run's serving cache."""

    def __init__(self, run: Any, cfg: Any) -> None:
        self.run, self.cfg = run, cfg
        self.server = None
        self._generator: Generator | None = None

    @property
    def generator(self) -> Any:
        if self._generator is None:
            base = self.run.base_dir()
            if self.cfg.backend == "vllm-server":
                from pareto.generation.vllm_server import VLLMServer, VLLMServerGenerator, vllm_python

                if self.cfg.url:
                    self._generator = VLLMServerGenerator(self.cfg.url, tokenizer=base)
                else:  # start one from the vLLM venv, on 127.0.0.1, for this process
                    self.server = VLLMServer(base, python=vllm_python(self.cfg.venv),
                                             max_lora_rank=self.cfg.max_lora_rank, max_loras=4).start()
                    self._generator = self.server.client()
            elif self.cfg.backend == "vllm-offline":
                from importlib.util import find_spec

                if find_spec("vllm") is None:
                    raise RuntimeError("serving.backend=vllm-offline needs vllm importable in this Python; use "
                                       "serving.backend=vllm-server (it runs vLLM from its own venv) instead")
                from pareto.generation.vllm_offline import VLLMOfflineGenerator

                self._generator = VLLMOfflineGenerator(base, max_lora_rank=self.cfg.max_lora_rank)
            else:
                raise ValueError(f"serving.backend={self.cfg.backend!r} is not a vLLM backend")
        return self._generator

    def adapter(self, choice: Any) -> tuple[str, Path]:
        """The chosen point as a plain LoRA adapter directory (exported once, then cached): (name, path)."""
        from pareto import export

        key = hashlib.sha1(f"{choice.model_uri}|{choice.served_weights}".encode()).hexdigest()[:12]
        name = f"{choice.method}-{key}"
        dst = self.run.cache_dir / "lora" / name
        if not (dst / export.CONFIG_NAME).is_file():
            src = self.run.artifact(choice.model_uri)
            tmp = dst.with_name(f"{name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            export.export_point(src, tmp, method=choice.method, policy_kind=_kind(self.run, choice.method),
                                conditioned=choice.conditioned, weights=choice.served_weights,
                                objectives=self.run.objectives)
            rank = export.read_adapter(tmp)[0]["r"]
            if rank > self.cfg.max_lora_rank:
                raise ValueError(f"{choice.method} exports at rank {rank} > serving.max_lora_rank="
                                 f"{self.cfg.max_lora_rank}; raise serving.max_lora_rank")
            shutil.rmtree(dst, ignore_errors=True)
            tmp.rename(dst)  # atomic: a half-written adapter is never served
        return name, dst

    def answer(self, choice: Any, prompt: str, max_new_tokens: int, repetition_penalty: float = 1.0) -> str:
        name, path = self.adapter(choice)
        gen = self.generator
        if name not in gen.paths:
            gen.register(name, path)
        return gen.generate([prompt], name, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)[0]

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
            self._generator = None
