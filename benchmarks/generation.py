"""Generation throughput: vLLM vs transformers+PEFT on the same LoRA adapters and prompts.

    python benchmarks/generation.py [--export DIR] [--prompts 32] [--max-new-tokens 32] [--json OUT]

Each backend answers the same batch (greedy, one adapter per prompt cycling through the front's adapters, so the
batch mixes λs) after one warm-up call; tokens/s = generated tokens / wall seconds of the timed call. Engine
start-up is reported separately. vLLM runs from its own venv (scripts/vllm_env.sh): the offline engine through
`pareto.generation.vllm_offline` (a script inside that env) and the OpenAI-compatible server over HTTP. Without
--export, a synthetic export is made (untrained tiny Llama, head_dim 64, and random rank-8 adapters), so answers
run to the token limit and the numbers measure decoding, not the model's taste for short answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))


def synthetic_export(out: Path, n_adapters: int = 3, hidden: int = 128, seed: int = 0) -> Path:
    """An export directory (base/, adapters/, manifest.json) with an untrained tiny Llama and random adapters."""
    import torch
    from peft import LoraConfig, get_peft_model

    from pareto.config import TinyModelConfig
    from pareto.data import load_task
    from pareto.models.policy import build_tiny_model, load_policy, save_model, train_tokenizer

    task = load_task("tiny-hh", seed=seed)
    tokenizer = train_tokenizer([f"User: {p}\nAssistant: {r}" for p, r in task.sft_examples()[:2000]], 1024)
    cfg = TinyModelConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_heads=hidden // 64, num_kv_heads=1)
    save_model(build_tiny_model(cfg, tokenizer, seed), tokenizer, out / "base")
    adapters = {}
    for i in range(n_adapters):
        base, _ = load_policy(out / "base")
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                    "o_proj", "gate_proj", "up_proj",
                                                                                    "down_proj"]))
        gen = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(str(out / "adapters" / f"synthetic-{i}"))
        adapters[f"synthetic-{i}"] = {"path": f"adapters/synthetic-{i}", "rank": 8, "method": "synthetic",
                                      "weights": [], "values": {}}
    (out / "manifest.json").write_text(json.dumps({"schema": "pareto.export/1", "base_model": "base",
                                                   "adapters": adapters, "max_lora_rank": 8, "not_exported": {}}))
    return out


def _rate(tokens: int, seconds: float) -> dict[str, float]:
    return {"tokens": tokens, "seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1)}


def generation_benchmark(export_dir: str | Path | None = None, n_prompts: int = 32, max_new_tokens: int = 32,
                         backends: tuple[str, ...] = ("hf", "vllm-offline", "vllm-server"),
                         vllm_python: str | Path | None = None, build_env: bool = False) -> dict[str, Any]:
    """Generated tokens per second for each backend on the same adapters and prompts (see the module docstring).

    vLLM rows read {"skipped": reason} when its environment is missing (build it with scripts/vllm_env.sh or
    pass build_env=True). `identical_greedy` says whether every backend produced the same token ids.
    """
    from pareto.data import load_task
    from pareto.generation.hf import HFGenerator, read_export
    from pareto.generation.vllm_server import VLLMError, VLLMServer, ensure_vllm_env, load_tokenizer
    from pareto.generation.vllm_server import vllm_python as default_vllm_python
    from pareto.models.policy import prompt_text

    tmp = None
    if export_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pareto-genbench-")
        export_dir = synthetic_export(Path(tmp.name))
    export_dir = Path(export_dir)
    base, adapters = read_export(export_dir)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    names = sorted(adapters)[:3]
    task_prompts = [p.text for p in load_task("tiny-hh", seed=0).prompts("eval")]
    prompts = [task_prompts[i % len(task_prompts)] for i in range(n_prompts)]
    per_prompt = [names[i % len(names)] for i in range(n_prompts)]  # a batch that mixes λs
    report: dict[str, Any] = {"export": str(export_dir), "adapters": names, "n_prompts": n_prompts,
                              "max_new_tokens": max_new_tokens, "greedy": True}
    outputs: dict[str, list[list[int]]] = {}

    if "hf" in backends:
        gen = HFGenerator(base, {n: adapters[n] for n in names})
        gen.complete(prompts[:2], per_prompt[:2], max_new_tokens=4)  # warm-up: loads the adapters
        start = time.perf_counter()
        done = gen.complete(prompts, per_prompt, max_new_tokens=max_new_tokens)
        seconds = time.perf_counter() - start
        outputs["hf"] = [c.token_ids for c in done]
        report["hf"] = _rate(sum(len(c.token_ids) for c in done), seconds)

    python = Path(vllm_python) if vllm_python else default_vllm_python()
    if build_env and any(b.startswith("vllm") for b in backends):
        try:
            python = ensure_vllm_env()
        except VLLMError as err:
            report["vllm_env"] = f"build failed: {err}"
    rank = int(manifest.get("max_lora_rank") or 8)
    if "vllm-offline" in backends:
        if not python.is_file():
            report["vllm_offline"] = {"skipped": f"no vLLM env at {python} (bash scripts/vllm_env.sh)"}
        else:
            from pareto.generation.vllm_offline import run_offline

            tok = load_tokenizer(base)
            ids = [tok(prompt_text(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
            batch = {"prompt_token_ids": ids, "adapters": per_prompt, "max_new_tokens": max_new_tokens}
            out = run_offline({"base_model": str(base), "adapters": {n: str(adapters[n]) for n in names},
                               "engine": {"max_lora_rank": rank, "max_loras": len(names)},
                               "batches": [{**batch, "max_new_tokens": 4}, batch]}, python=python)
            outputs["vllm_offline"] = [r["token_ids"] for r in out["results"][1]]
            report["vllm_offline"] = {**_rate(out["generated_tokens"][1], out["batch_seconds"][1]),
                                      "init_seconds": round(out["init_seconds"], 1),
                                      "vllm_version": out["vllm_version"]}
    if "vllm-server" in backends:
        if not python.is_file():
            report["vllm_server"] = {"skipped": f"no vLLM env at {python} (bash scripts/vllm_env.sh)"}
        else:
            with VLLMServer(base, {n: adapters[n] for n in names}, python=python, max_lora_rank=rank,
                            max_loras=len(names), startup_timeout=900) as server:
                client = server.client()
                client.complete(prompts[:2], per_prompt[:2], max_new_tokens=4)  # warm-up
                start = time.perf_counter()
                done = client.complete(prompts, per_prompt, max_new_tokens=max_new_tokens)
                seconds = time.perf_counter() - start
            outputs["vllm_server"] = [c.token_ids for c in done]
            report["vllm_server"] = {**_rate(sum(len(c.token_ids) for c in done), seconds),
                                     "startup_seconds": round(server.startup_seconds, 1)}
    if len(outputs) > 1:
        first = next(iter(outputs.values()))
        report["identical_greedy"] = all(o == first for o in outputs.values())
    if "hf" in report:
        for key in ("vllm_offline", "vllm_server"):
            if "tokens_per_s" in report.get(key, {}):
                report[key]["speedup_vs_hf"] = round(report[key]["tokens_per_s"] / report["hf"]["tokens_per_s"], 2)
    if tmp is not None:
        tmp.cleanup()
    return report


def table(report: dict[str, Any]) -> str:
    lines = ["| backend | tokens | seconds | tokens/s | start-up s | vs hf |", "|---|---|---|---|---|---|"]
    for key in ("hf", "vllm_offline", "vllm_server"):
        row = report.get(key)
        if row is None:
            continue
        if "skipped" in row:
            lines.append(f"| {key} | skipped: {row['skipped']} | | | | |")
            continue
        startup = row.get("init_seconds", row.get("startup_seconds", ""))
        lines.append(f"| {key} | {row['tokens']} | {row['seconds']} | {row['tokens_per_s']} | {startup} | "
                     f"{row.get('speedup_vs_hf', 1.0 if key == 'hf' else '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=None, help="a `pareto export` directory (default: synthetic)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--backends", default="hf,vllm-offline,vllm-server")
    parser.add_argument("--build-env", action="store_true", help="build the vLLM venv first if it is missing")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    report = generation_benchmark(args.export, args.prompts, args.max_new_tokens, tuple(args.backends.split(",")),
                                  build_env=args.build_env)
    text = json.dumps(report, indent=2)
    print(text)
    print(table(report))
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":  # the guard matters: vLLM's offline engine spawns processes
    sys.exit(main())
