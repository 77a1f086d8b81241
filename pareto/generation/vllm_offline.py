"""vLLM's offline engine in process: `LLM(..., enable_lora=True)` and one `LoRARequest` per prompt, so one batch
mixes preferences (adapters).

`VLLMOfflineGenerator` only works where `vllm` is importable, i.e. inside the separate vLLM environment
(scripts/vllm_env.sh): vllm is imported lazily and this module imports nothing else from the project but the
standard-library-only `pareto.generation.interface`. From the project's own environment, `run_offline` runs this
module as a script inside that environment:

    $VLLM_PY -m pareto.generation.vllm_offline REQUEST.json OUT.json        (with PYTHONPATH=<repo root>)

REQUEST.json: {"base_model": dir, "adapters": {name: dir}, "engine": {LLM kwargs},
               "batches": [{"prompt_token_ids": [[...], ...]  (or "prompts": [...]),
                            "adapters": [name | null per prompt], "max_new_tokens": 48, "greedy": true}]}
OUT.json:     {"results": [[{"text", "token_ids", "adapter"}, ...] per batch], "init_seconds", "batch_seconds",
               "generated_tokens", "vllm_version"}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pareto.generation.interface import AdapterArg, Completion, cut_at_eos, per_prompt_adapters

ROOT = Path(__file__).resolve().parents[2]


class VLLMOfflineGenerator:
    """`generate(prompts, adapter)` on an in-process vLLM engine with multi-LoRA."""

    def __init__(self, base_model: str | Path, adapters: Mapping[str, str | Path] | None = None, *,
                 max_lora_rank: int = 8, max_loras: int = 2, max_cpu_loras: int | None = None,
                 max_model_len: int | None = None, dtype: str = "float32", enforce_eager: bool = True,
                 **engine_kwargs: Any) -> None:
        from vllm import LLM  # lazy: only the vLLM environment has it

        self.paths: dict[str, Path] = {}
        self._ids: dict[str, int] = {}
        for name, path in (adapters or {}).items():
            self.register(name, path)
        n = max(len(self.paths), max_loras)
        self.llm = LLM(model=str(base_model), enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras,
                       max_cpu_loras=max_cpu_loras or n, max_model_len=max_model_len, dtype=dtype,
                       enforce_eager=enforce_eager, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def register(self, name: str, path: str | Path) -> None:
        if name not in self._ids:
            self._ids[name] = len(self._ids) + 1  # vLLM keys adapters by a unique positive int
        self.paths[name] = Path(path).resolve()

    def _lora(self, name: str | None):
        from vllm.lora.request import LoRARequest

        if name is None:
            return None
        if name not in self.paths:
            raise KeyError(f"unknown adapter {name!r}; registered: {sorted(self.paths)}")
        return LoRARequest(name, self._ids[name], str(self.paths[name]))

    @property
    def eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.llm.llm_engine.model_config.hf_config, "eos_token_id", None)
        ids |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
        return sorted(i for i in ids if i is not None)

    def encode(self, prompt: str) -> list[int]:
        """The chat-formatted prompt as token ids (as the transformers backend renders it)."""
        if self.tokenizer.chat_template is None:
            raise ValueError("the base model's tokenizer has no chat template; pass prompt_token_ids instead")
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                  tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def complete_ids(self, prompt_token_ids: Sequence[Sequence[int]], adapter: AdapterArg = None,
                     max_new_tokens: int = 48, greedy: bool = True, temperature: float = 1.0,
                     seed: int | None = None, repetition_penalty: float = 1.0) -> list[Completion]:
        """One `LLM.generate` call for the whole batch, with one LoRARequest (or None) per prompt."""
        from vllm import SamplingParams

        names = per_prompt_adapters(adapter, len(prompt_token_ids))
        if not names:
            return []
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature, seed=seed,
                                repetition_penalty=repetition_penalty, skip_special_tokens=True)
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, lora_request=[self._lora(n) for n in names], use_tqdm=False)
        results = []
        for out, name in zip(outputs, names, strict=True):
            ids = cut_at_eos(out.outputs[0].token_ids, self.eos_ids)
            results.append(Completion(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), ids, name))
        return results

    def complete(self, prompts: Sequence[str], adapter: AdapterArg = None, max_new_tokens: int = 48,
                 greedy: bool = True, temperature: float = 1.0, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> list[Completion]:
        return self.complete_ids([self.encode(p) for p in prompts], adapter, max_new_tokens, greedy, temperature,
                                 seed, repetition_penalty)

    def generate(self, prompts: Sequence[str], adapter: AdapterArg = None, max_new_tokens: int = 48,
                 greedy: bool = True, temperature: float = 1.0, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> list[str]:
        return [c.text for c in self.complete(prompts, adapter, max_new_tokens, greedy, temperature, seed,
                                              repetition_penalty)]


# ---- script mode: run inside the vLLM environment ----------------------------------------------------------
def _serve_request(request: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    gen = VLLMOfflineGenerator(request["base_model"], request.get("adapters", {}), **request.get("engine", {}))
    init_seconds = time.perf_counter() - start
    results, seconds, tokens = [], [], []
    for batch in request["batches"]:
        kwargs = {k: batch[k] for k in ("max_new_tokens", "greedy", "temperature", "seed", "repetition_penalty")
                  if k in batch}
        ids = batch.get("prompt_token_ids") or [gen.encode(p) for p in batch["prompts"]]
        t0 = time.perf_counter()
        done = gen.complete_ids(ids, batch.get("adapters"), **kwargs)
        seconds.append(time.perf_counter() - t0)
        tokens.append(sum(len(c.token_ids) for c in done))
        results.append([asdict(c) for c in done])
    import vllm

    return {"results": results, "init_seconds": init_seconds, "batch_seconds": seconds, "generated_tokens": tokens,
            "vllm_version": vllm.__version__}


def run_offline(request: Mapping[str, Any], python: str | Path | None = None, timeout: float = 900,
                env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run a REQUEST (see the module docstring) through this module inside the vLLM environment.

    Called from the project's environment, which cannot import vLLM; the engine starts and stops per call.
    """
    from pareto.generation.vllm_server import VLLMError, vllm_python

    python = Path(python) if python else vllm_python()
    if not python.is_file():
        raise VLLMError(f"no vLLM environment at {python}; build it with `bash scripts/vllm_env.sh`")
    with tempfile.TemporaryDirectory(prefix="pareto-vllm-offline-") as tmp:
        req_file, out_file = Path(tmp) / "request.json", Path(tmp) / "out.json"
        req_file.write_text(json.dumps(request))
        run_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                   "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(env or {})}
        try:
            proc = subprocess.run([str(python), "-m", "pareto.generation.vllm_offline", str(req_file), str(out_file)],
                                  capture_output=True, text=True, timeout=timeout, env=run_env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise VLLMError(f"the vLLM offline run took more than {timeout:.0f} s") from None
        if proc.returncode != 0 or not out_file.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise VLLMError(f"the vLLM offline run failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out_file.read_text())


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m pareto.generation.vllm_offline REQUEST.json OUT.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(_serve_request(request)))
    return 0


if __name__ == "__main__":  # the guard matters: vLLM spawns its engine core process
    sys.exit(main(sys.argv[1:]))
