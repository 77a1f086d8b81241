"""Benchmark 3: preference switch latency — Panacea `set_preference` vs Rewarded-Soups re-merge vs PEFT adapters.

All on the tiny Llama with LoRA r=8 on the default modules, K=3. Each figure is the median over many switches
to a fresh random λ (Dirichlet): Panacea writes λ into its SVD-LoRA layers; Soups builds the λ-merged adapter
(`merge_adapters`, delta merge) and activates it, then drops it (a λ it has not cached); the per-weight baseline
either loads the nearest λ's adapter from disk (`load_adapter` + `set_adapter`, then unloads it) or, when every
adapter is already resident, only calls `set_adapter`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import one_thread, row
from benchmarks.fixtures import OBJECTIVES, tiny_base

K = len(OBJECTIVES)


def _median(fn, n: int, warmup: int = 3) -> float:
    times = []
    for i in range(n + warmup):
        start = time.perf_counter()
        fn(i)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(n_fast: int = 500, n_slow: int = 40) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    from pareto.config import DPOConfig
    from pareto.models.policy import load_policy
    from pareto.models.svd_lora import add_panacea_adapter, panacea_lora_config, set_preference

    one_thread()
    cfg = DPOConfig()
    rng = np.random.default_rng(0)
    lams = rng.dirichlet(np.ones(K), size=n_fast + 10)
    torch.manual_seed(0)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules,
                      lora_dropout=0.0, task_type="CAUSAL_LM")

    base, _ = load_policy(tiny_base())
    panacea = add_panacea_adapter(base, panacea_lora_config(K, cfg.lora_rank, cfg.lora_alpha, cfg.target_modules))
    t_panacea = _median(lambda i: set_preference(panacea, lams[i]), n_fast)

    results: dict[str, float] = {"panacea_set_preference": t_panacea}
    base, _ = load_policy(tiny_base())
    peft = get_peft_model(base, lora, adapter_name="obj0")
    for h in range(1, K):
        peft.add_adapter(f"obj{h}", lora)
    names = [f"obj{h}" for h in range(K)]
    try:
        from pareto.models.soups import merge_adapters

        def soup(i: int) -> None:
            name = merge_adapters(peft, names, lams[i], f"soup{i}")
            peft.set_adapter(name)
            peft.set_adapter(names[0])
            peft.delete_adapter(name)

        results["soups_remerge"] = _median(soup, n_slow)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        for h, name in enumerate(names):  # six per-weight adapters on disk would behave the same; three suffice
            peft.set_adapter(name)
            peft.save_pretrained(str(Path(tmp) / f"w{h}"), selected_adapters=[name])
        peft.set_adapter(names[0])

        def load(i: int) -> None:
            h = i % K
            sub = Path(tmp) / f"w{h}" / names[h]  # PEFT saves a non-default adapter in a subfolder
            peft.load_adapter(str(sub if (sub / "adapter_config.json").exists() else sub.parent),
                              adapter_name="loaded")
            peft.set_adapter("loaded")
            peft.set_adapter(names[0])
            peft.delete_adapter("loaded")

        results["peft_load_adapter"] = _median(load, n_slow)
    results["peft_set_adapter_resident"] = _median(lambda i: peft.set_adapter(names[i % K]), n_fast)

    ms = {k: v * 1e3 for k, v in results.items()}
    speedup_load = results["peft_load_adapter"] / t_panacea
    rows = [row("Panacea set_preference latency (ms)", ms["panacea_set_preference"], None, "≤ 1 ms",
                ms["panacea_set_preference"] <= 1.0, "ms"),
            row("adapter load ÷ Panacea switch", results["peft_load_adapter"] * 1e3,
                ms["panacea_set_preference"], "≥ 50×", speedup_load >= 50, "ms", speedup_load,
                note="PEFT load_adapter from disk + set_adapter (per-weight baseline)")]
    if "soups_remerge" in results:
        rows.append(row("Soups re-merge ÷ Panacea switch", ms["soups_remerge"], ms["panacea_set_preference"],
                        "informational", None, "ms", results["soups_remerge"] / t_panacea))
    rows.append(row("resident set_adapter ÷ Panacea switch", ms["peft_set_adapter_resident"],
                    ms["panacea_set_preference"], "informational", None, "ms",
                    results["peft_set_adapter_resident"] / t_panacea,
                    note="all per-weight adapters kept in memory (K× the adapter memory)"))
    return {"name": "switch_latency", "rows": rows,
            "details": {"median_ms": ms, "switches_fast": n_fast, "switches_slow": n_slow, "k": K}}
