"""The default rollout engine: transformers `generate` on a local copy of the policy, CPU or GPU.

Its interface is described in `pareto.distributed.ppo.rollout`; `vllm_engine.VLLMRolloutEngine` subclasses it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pareto.distributed.bundle import Bundle, ModelRef, pack
from pareto.distributed.ppo.common import actor_device, setup_worker, unpack_tmp
from pareto.methods import load_method
from pareto.models.policy import hf_repetition_penalty, load_policy, prompt_text


class TransformersRolloutEngine:
    """transformers `generate` on a local copy of the policy (base + adapter), weights replaced on sync."""

    def __init__(self, base: ModelRef, method: str, mcfg, objectives: Sequence[str], seed: int, threads: int,
                 device: str = "cpu", load_options: dict | None = None) -> None:
        """`load_options`: `load_policy`'s dtype / trust_remote_code (the model section, `stages.load_options`)."""
        setup_worker(threads, seed)
        self.method, self.mcfg, self.objectives = load_method(method), mcfg, tuple(objectives)
        self.device = actor_device(device, "rollout")
        self.base_dir = unpack_tmp(base, "base")  # bytes unpacked; a folder or hub id by reference, never copied
        base_model, self.tokenizer = load_policy(self.base_dir, **(load_options or {}), device=self.device)
        self.model = self.method.build_policy(base_model, len(objectives), mcfg).to(self.device).eval()
        self.version = 0  # the freshly built adapter is a zero change: version 0 is the base policy

    def info(self) -> dict:
        return {"pad_id": self.tokenizer.pad_token_id, "eos_id": self.tokenizer.eos_token_id,
                "version": self.version}

    def ping(self) -> bool:
        return True

    def load_weights(self, version: int, tensors: dict[str, torch.Tensor]) -> int:
        """Copy the trainer's trainable tensors in; the name sets must match exactly (no silent partial sync)."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if set(params) != set(tensors):
            missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
            raise ValueError(f"weight sync v{version}: names differ (missing {missing[:3]}, unexpected {extra[:3]})")
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        self.version = version
        return version

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], weights: np.ndarray | None, max_new_tokens: int,
                 temperature: float = 1.0, do_sample: bool = True, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> dict:
        """One batch; `weights` [B, K] is λ per row (conditioned policies) or None. Sampling is pure
        temperature sampling (no top-k/top-p), so rollout log-probs are the policy's own; `repetition_penalty`
        (evaluation only) changes what is decoded, not the log-probs returned."""
        start = time.perf_counter()
        if weights is not None:
            self.method.apply_preferences(self.model, np.array(weights, dtype=np.float64))  # Ray's are read-only
        enc = self.tokenizer([prompt_text(self.tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        if seed is not None:
            torch.manual_seed(seed)
        out = self.model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature if do_sample else None, top_p=None, top_k=None,
            repetition_penalty=hf_repetition_penalty(repetition_penalty),
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            return_dict_in_generate=True, output_logits=True,
        )
        new = out.sequences[:, enc["input_ids"].shape[1]:].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu()  # [B, G, V], before any sampling warper
        logp = torch.log_softmax(logits / temperature, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        eos = self.tokenizer.eos_token_id
        prompt_ids, response_ids, logprobs, finished = [], [], [], []
        for i in range(len(prompts)):
            row = new[i].tolist()
            end = row.index(eos) + 1 if eos in row else len(row)  # keep the EOS: the policy chose to stop
            prompt_ids.append(enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist())
            response_ids.append(row[:end])
            logprobs.append(logp[i, :end].tolist())
            finished.append(eos in row)
        texts = [t.strip() for t in self.tokenizer.batch_decode([r for r in response_ids], skip_special_tokens=True)]
        return {"prompt_ids": prompt_ids, "response_ids": response_ids, "texts": texts, "logprobs": logprobs,
                "finished": finished, "version": self.version, "seconds": time.perf_counter() - start}

    def close(self) -> None:
        """Nothing outside this process to free."""

    def save_policy(self, weights: Sequence[float] | None = None) -> Bundle:
        with tempfile.TemporaryDirectory() as tmp:
            self.method.save_policy(self.model, self.tokenizer, self.objectives, weights, Path(tmp) / "adapter")
            return pack(Path(tmp) / "adapter")
