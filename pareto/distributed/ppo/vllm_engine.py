"""The vLLM rollout engine: generation by a vLLM OpenAI-compatible server, reached over HTTP.

vLLM lives in its own virtual environment (scripts/vllm_env.sh), so the project never imports it. The engine keeps
a CPU copy of the policy (base + adapter) to receive weight syncs; the server holds the base model and serves the
policy as LoRA adapters:

    load_weights(v, tensors)   copy into the local policy, then write it as the adapter `<tag>-v<v>` and load it
                               into the server (`/v1/load_lora_adapter`); adapters of older versions are unloaded
    generate(prompts, λ rows)  one request per distinct λ, sent concurrently (one engine batch); a Panacea policy
                               is exported per (version, λ) as a plain LoRA adapter (B' = B·diag(σ ⊕ s·λ)) the
                               first time that λ is asked for, as `<tag>-v<v>-l<i>`
    the result records the version (and the adapter names) used

The server is either started by the engine from the vLLM venv on the base model (`ppo.vllm.url` null; it dies
with the engine's process) or an existing one at `ppo.vllm.url` serving the same base model, whose filesystem
must see `ppo.vllm.adapter_dir`. Runtime LoRA loading needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True on the server.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pareto.config import PPOVLLMConfig
from pareto.distributed.bundle import ModelRef
from pareto.distributed.ppo.transformers_engine import TransformersRolloutEngine
from pareto.generation.vllm_server import VLLMError, VLLMServer, VLLMServerGenerator, request_json, vllm_python
from pareto.models.policy import prompt_text
from pareto.models.svd_lora import PanaceaLoraConfig, export_lora, next_vllm_rank

# Run the server with PR_SET_PDEATHSIG, so it gets SIGTERM when the engine's process dies, even by SIGKILL
# (`ray.kill`): an orphaned server would hold the GPU (or the CPU KV cache) for good. Then it is `python -m`.
_BOOT = ("import ctypes, runpy, signal\n"
         "prctl = getattr(ctypes.CDLL(None), 'prctl', None)\n"
         "if prctl is not None:\n"
         "    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)\n"
         "runpy.run_module('vllm.entrypoints.openai.api_server', run_name='__main__', alter_sys=True)\n")


class _ChildServer(VLLMServer):
    """A VLLMServer that ends with the process that started it."""

    @property
    def command(self) -> list[str]:
        return [str(self.python), "-c", _BOOT, *self.args]


def adapter_rank(model) -> int:
    """The LoRA rank vLLM must accept for this policy's exported adapters (Panacea pads to a vLLM rank)."""
    cfg = model.peft_config[model.active_adapter]
    return next_vllm_rank(cfg.r) if isinstance(cfg, PanaceaLoraConfig) else int(cfg.r)


class VLLMRolloutEngine(TransformersRolloutEngine):
    """Rollouts from a vLLM server; the interface of `TransformersRolloutEngine` (same outputs, same versions)."""

    def __init__(self, base: ModelRef, method: str, mcfg, objectives: Sequence[str], seed: int, threads: int,
                 device: str = "cpu", vllm: PPOVLLMConfig | None = None, load_options: dict | None = None) -> None:
        # the local copy only receives syncs and exports adapters: CPU, whatever the server runs on
        super().__init__(base, method, mcfg, objectives, seed, threads, device="cpu", load_options=load_options)
        self.cfg = vllm or PPOVLLMConfig()
        self.tag = f"ppo-{uuid.uuid4().hex[:8]}"  # unique: several engines may share one server
        root = Path(self.cfg.adapter_dir) if self.cfg.adapter_dir else Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        self.adapter_root = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir=root))
        self.conditioned = not mcfg.per_weight  # Panacea-PPO: λ per row; MORLHF: one λ per policy
        self.rank = adapter_rank(self.model)
        self.server: VLLMServer | None = None
        if self.cfg.url is None:
            max_rank = self.cfg.max_lora_rank or next_vllm_rank(self.rank)
            if max_rank < self.rank:
                raise ValueError(f"ppo.vllm.max_lora_rank={max_rank} is below the policy's LoRA rank {self.rank}; "
                                 "raise it or lower methods.<method>.lora_rank")
            extra = ["--generation-config", "vllm",  # not the checkpoint's sampling defaults (top-k, top-p, ...)
                     "--logprobs-mode", "processed_logprobs",  # log-probs after temperature, as PPO computes them
                     "--seed", str(seed), *self.cfg.extra_args]
            self.server = _ChildServer(self.base_dir, python=vllm_python(self.cfg.venv), max_lora_rank=max_rank,
                                       max_loras=self.cfg.max_loras, max_cpu_loras=4 * self.cfg.max_loras,
                                       max_model_len=self.cfg.max_model_len, extra_args=extra,
                                       log_file=self.adapter_root / "server.log",
                                       startup_timeout=self.cfg.startup_timeout).start()
            url = self.server.url
        else:
            url = self.cfg.url
        self.client = VLLMServerGenerator(url, self.tokenizer, timeout=self.cfg.request_timeout)
        if self.server is not None:
            self.served_model = self.server.served_model_name
        else:
            self.served_model = self.client.served_model
        self.adapters: dict[tuple[float, ...] | None, str] = {}  # λ (None: MORLHF) -> adapter at self.version
        self._publish()

    # ---- weight sync ---------------------------------------------------------------------------------------
    def load_weights(self, version: int, tensors: dict[str, torch.Tensor]) -> int:
        super().load_weights(version, tensors)
        self._publish()
        return version

    def _publish(self) -> None:
        """Drop the previous version's adapters from the server; MORLHF's policy is loaded now, Panacea's per λ
        on first use (its adapter depends on λ)."""
        self._unload_all()
        if not self.conditioned:
            self._adapter(None)

    def _unload_all(self) -> None:
        old, self.adapters = self.adapters, {}
        for name in old.values():
            try:
                request_json(f"{self.client.url}/v1/unload_lora_adapter", {"lora_name": name}, timeout=60)
            except VLLMError:
                pass  # already gone (e.g. a restarted external server): nothing to free
            shutil.rmtree(self.adapter_root / name, ignore_errors=True)

    def _adapter(self, lam: tuple[float, ...] | None) -> str:
        """The policy at (current version, λ) as a LoRA adapter loaded into the server; its served name."""
        if lam not in self.adapters:
            name = f"{self.tag}-v{self.version}" + ("" if lam is None else f"-l{len(self.adapters)}")
            path = self.adapter_root / name
            if lam is None:
                tmp = self.adapter_root / f".{name}"
                self.model.save_pretrained(str(tmp))  # PEFT nests a non-default adapter name in a sub-directory
                shutil.move(str(next(p.parent for p in tmp.rglob("adapter_config.json"))), str(path))
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                export_lora(self.model, lam, path)
            self.client.load_adapter(name, path)
            self.adapters[lam] = name
        return self.adapters[lam]

    # ---- generation ----------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], weights: np.ndarray | None, max_new_tokens: int,
                 temperature: float = 1.0, do_sample: bool = True, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> dict:
        start = time.perf_counter()
        if weights is not None and not self.conditioned:
            raise ValueError("a per-λ (MORLHF) policy is not conditioned on λ: pass weights=None")
        if weights is None and self.conditioned:
            raise ValueError("a Panacea policy needs λ per row (weights [B, K])")
        rows = [None] * len(prompts) if weights is None else [tuple(map(float, w)) for w in np.asarray(weights)]
        ids = [self.tokenizer(prompt_text(self.tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
        groups: dict[tuple[float, ...] | None, list[int]] = {}
        for i, lam in enumerate(rows):
            groups.setdefault(lam, []).append(i)
        names = {lam: self._adapter(lam) for lam in groups}
        payload = {"max_tokens": max_new_tokens, "temperature": temperature if do_sample else 0.0, "top_p": 1.0,
                   "top_k": 0, "logprobs": 0, "return_token_ids": True, "skip_special_tokens": True,
                   "add_special_tokens": False, "repetition_penalty": repetition_penalty}
        # A request's seed drives every prompt in it alike, so a seeded sampled batch is one request per row
        # (seed + row): otherwise the samples of one prompt would all be the same. Else one request per λ.
        if do_sample and seed is not None:
            jobs = [(names[lam], [i], int(seed) + i) for i, lam in enumerate(rows)]
        else:
            jobs = [(names[lam], idx, None) for lam, idx in groups.items()]
        with ThreadPoolExecutor(max_workers=min(len(jobs), 32)) as pool:  # concurrent requests: one engine batch
            futures = [pool.submit(self._complete, model, [ids[i] for i in idx], payload, job_seed)
                       for model, idx, job_seed in jobs]
            answers = [f.result() for f in futures]
        eos = self.tokenizer.eos_token_id
        out: dict = {k: [None] * len(prompts) for k in ("prompt_ids", "response_ids", "logprobs", "finished")}
        for (model, idx, _), choices in zip(jobs, answers, strict=True):
            if len(choices) != len(idx):
                raise VLLMError(f"asked {len(idx)} completions of {model}, got {len(choices)}")
            for i, choice in zip(idx, choices, strict=True):
                tokens = list(choice["token_ids"])
                logprobs = list((choice.get("logprobs") or {}).get("token_logprobs") or [])
                finished = eos in tokens
                end = tokens.index(eos) + 1 if finished else len(tokens)  # keep the EOS, as the transformers engine
                out["prompt_ids"][i] = ids[i]
                out["response_ids"][i] = tokens[:end]
                out["logprobs"][i] = [float(x) for x in logprobs[:end]]
                out["finished"][i] = finished
        texts = [t.strip() for t in self.tokenizer.batch_decode(out["response_ids"], skip_special_tokens=True)]
        return {**out, "texts": texts, "version": self.version, "adapters": [names[lam] for lam in rows],
                "seconds": time.perf_counter() - start}

    def _complete(self, model: str, prompts: list[list[int]], payload: dict, seed: int | None) -> list[dict]:
        body = {**payload, "model": model, "prompt": prompts, **({} if seed is None else {"seed": seed})}
        data = request_json(f"{self.client.url}/v1/completions", body, self.cfg.request_timeout)
        return sorted(data["choices"], key=lambda c: c["index"])

    def served_adapters(self) -> list[str]:
        """The adapters the server holds now (for tests and operators)."""
        return sorted(name for name, parent in self.client.models().items() if parent is not None)

    def close(self) -> None:
        """Stop the server this engine started; on a shared server, unload this engine's adapters."""
        if self.server is None:
            self._unload_all()
        else:
            self.server.stop()
            self.server = None
        shutil.rmtree(self.adapter_root, ignore_errors=True)
