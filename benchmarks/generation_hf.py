"""Benchmark 7: generation tokens/s of the transformers backend, batched vs one prompt at a time, and (through
benchmarks/generation.py) vLLM vs transformers when a vLLM environment (and a GPU) is present.

Same untrained tiny Llama, same 16 prompts, greedy, a fixed number of new tokens (no EOS stop: the untrained
model rarely emits one, so both sides decode the same token count).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import one_thread, row, skipped
from benchmarks.fixtures import tiny_base


def run(n_prompts: int = 16, max_new_tokens: int = 24) -> dict[str, Any]:
    import torch

    from pareto.data import load_task
    from pareto.models.policy import generate, load_policy

    one_thread()
    model, tok = load_policy(tiny_base())
    model.eval()
    prompts = [p.text for p in load_task("tiny-hh", seed=0).prompts("eval")][:n_prompts]
    gen = {"max_new_tokens": max_new_tokens, "do_sample": False}

    def tokens(outs: list[str]) -> int:
        return sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outs)

    with torch.no_grad():
        generate(model, tok, prompts[:2], **gen)  # warm-up
        t = time.perf_counter()
        batched = generate(model, tok, prompts, **gen)
        t_batched = time.perf_counter() - t
        t = time.perf_counter()
        single = [generate(model, tok, [p], **gen)[0] for p in prompts]
        t_single = time.perf_counter() - t
    tps_b, tps_s = tokens(batched) / t_batched, tokens(single) / t_single
    rows = [row("HF generation tokens/s: batched ÷ unbatched", tps_b, tps_s, "informational (> 1×)", None,
                "tokens/s")]
    details: dict[str, Any] = {"n_prompts": n_prompts, "max_new_tokens": max_new_tokens,
                               "batched_seconds": t_batched, "unbatched_seconds": t_single}
    try:
        from benchmarks.generation import generation_benchmark

        if torch.cuda.is_available():
            report = generation_benchmark(n_prompts=32, max_new_tokens=32)
            details["vllm"] = report
            vo = report.get("vllm_offline", {})
            if "tokens_per_s" in vo:
                rows.append(row(f"vLLM offline ÷ transformers tokens/s ({torch.cuda.get_device_name(0)})",
                                vo["tokens_per_s"], report["hf"]["tokens_per_s"], "informational", None, "tokens/s"))
            else:
                rows.append(skipped("vLLM ÷ transformers tokens/s", "GPU", str(vo.get("skipped", "no result"))))
        else:
            rows.append(skipped("vLLM ÷ transformers tokens/s", "on a GPU", "no GPU on this machine "
                                "(python benchmarks/generation.py runs it where there is one)"))
    except ImportError as err:
        rows.append(skipped("vLLM ÷ transformers tokens/s", "on a GPU", str(err)))
    return {"name": "generation", "rows": rows, "details": details}
