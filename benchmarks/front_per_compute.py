"""Benchmark 1: front quality per compute — every method's oracle hypervolume, IGD to the oracle front and
training CPU-seconds, against the per-weight DPO baseline (same λ grid, same run, same base and reward models).

One pipeline run (`pareto run` in a fresh PARETO_HOME) trains every offline method side by side: the quickstart
config (Panacea and the per-weight DPO baseline) plus the method sections of configs/ric.yaml, mah_dpo.yaml,
soups.yaml and modpo.yaml, so each method keeps the settings its own config gives it. The numbers are the ones
the pipeline records in each front's meta. $PARETO_BENCH_HOME reads an existing store instead (e.g. a finished
`pareto quickstart`). The target is about single-model (conditioned) methods; per-weight ones are informational.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import RESULTS, row, skipped

BASELINE = "per_weight_dpo"
TARGET = "HV ≥ 0.95× and train s ≤ 0.3× of per-weight DPO"


ROOT = Path(__file__).resolve().parent.parent
METHOD_CONFIGS = ("ric", "mah_dpo", "soups", "modpo")  # added to the quickstart's panacea + per_weight_dpo


def rows_for(methods: dict[str, dict], run_id: str = "?") -> list[dict[str, Any]]:
    base = methods.get(BASELINE)
    if base is None:
        return [skipped("front per compute", TARGET, f"no {BASELINE} front in the run")]
    out = []
    for name, m in sorted(methods.items()):
        if name == BASELINE:
            continue
        hv = m["hypervolume"] / base["hypervolume"]
        compute = m["train_seconds"] / base["train_seconds"]
        single = m.get("models_trained") == 1
        out.append(row(f"front per compute: {name} HV ÷ {BASELINE} HV ({m['points']} λ)", m["hypervolume"],
                       base["hypervolume"], TARGET if single else "informational (one model per λ)",
                       (hv >= 0.95 and compute <= 0.3) if single else None, "HV", hv,
                       note=f"train {m['train_seconds']:.0f} CPU-s vs {base['train_seconds']:.0f} = {compute:.2f}×; "
                            f"IGD {m['igd']:.3f} vs {base['igd']:.3f}; {m['models_trained']} vs "
                            f"{base['models_trained']} models; run {run_id}"))
    return out


def all_methods_yaml(methods: tuple[str, ...] = METHOD_CONFIGS) -> str:
    """The quickstart config with the method sections of the other offline methods' configs added, as YAML."""
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    for name in methods:
        cfg["methods"][name] = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["methods"][name]
    cfg["name"] = "front-per-compute"
    return yaml.safe_dump(cfg, sort_keys=False)


def measure(overrides: list[str], methods: tuple[str, ...] = METHOD_CONFIGS, name: str = "fpc") -> dict[str, Any]:
    """One `pareto run` of the quickstart's methods plus `methods` in a fresh PARETO_HOME ($PARETO_BENCH_KEEP/NAME
    to keep it): its fronts, or the log's tail under "failed"."""
    from benchmarks.quickstart import measure_run, read_fronts

    with tempfile.TemporaryDirectory(prefix="pareto-bench-fpc-") as tmp:
        config = Path(tmp) / "all_methods.yaml"
        config.write_text(all_methods_yaml(methods))
        measured, fronts = measure_run(name, config, [arg for o in overrides for arg in ("--set", o)], read_fronts)
    if fronts is None:
        return {"failed": f"exit {measured['returncode']}", "log_tail": measured["log_tail"][-2000:]}
    return {**fronts, "source": f"one run of {', '.join(methods)} with the quickstart's methods",
            "wall_seconds": measured["wall_seconds"]}


def run() -> dict[str, Any]:
    home = os.environ.get("PARETO_BENCH_HOME")
    if home:
        from benchmarks.quickstart import read_fronts

        fronts = {**read_fronts(Path(home)), "source": f"PARETO_HOME {home}"}
    else:
        fronts = measure([])
        if "failed" in fronts:
            return {"name": "front_per_compute", "rows": [skipped("front per compute", TARGET, fronts["failed"])],
                    "details": fronts}
    return {"name": "front_per_compute", "rows": rows_for(fronts["methods"], fronts["run_id"][:8]), "details": fronts}


# ---- issue 14: the claim at a useful resolution, across seeds ------------------------------------------------------
GRID_15 = 15                       # Das-Dennis, 4 partitions, for the quickstart's 3 objectives
SEEDS_15 = (0, 1, 2, 3, 4)         # $PARETO_BENCH_SEEDS ("0,1") measures fewer
METHODS_15 = ("ric", "mah_dpo")    # the conditioned methods next to Panacea (per-weight ones cost 15 models a seed)
TARGETS_15 = {"panacea": "median HV ≥ 1.0× (each seed ≥ 0.95×), CPU-s ≤ 0.10×, median IGD ≤ 0.10, vertex check "
                         "every seed",
              "ric": "median HV ≥ 0.95× at CPU-s ≤ 0.3×", "mah_dpo": "median HV ≥ 0.95× at CPU-s ≤ 0.3×"}


def rows_15(per_seed: dict[int, dict[str, dict]]) -> list[dict[str, Any]]:
    """Per method: the median over seeds of HV ÷ the per-weight baseline's, with every seed's ratios in the note."""
    out = []
    for name, target in TARGETS_15.items():
        cells = {seed: (m[name], m[BASELINE]) for seed, m in per_seed.items() if name in m and BASELINE in m}
        if not cells:
            out.append(skipped(f"15 λ: {name} HV ÷ {BASELINE} HV, median over seeds", target, "no run finished"))
            continue
        hv = {s: a["hypervolume"] / b["hypervolume"] for s, (a, b) in cells.items()}
        cpu = {s: a["train_seconds"] / b["train_seconds"] for s, (a, b) in cells.items()}
        igd = {s: a["igd"] for s, (a, _) in cells.items()}
        vertex = {s: min(a["vertex_separation"]) for s, (a, _) in cells.items()}
        med = float(np.median(list(hv.values())))
        if name == "panacea":
            ok = (med >= 1.0 and min(hv.values()) >= 0.95 and max(cpu.values()) <= 0.10
                  and float(np.median(list(igd.values()))) <= 0.10 and min(vertex.values()) > 2.0)
        else:
            ok = med >= 0.95 and float(np.median(list(cpu.values()))) <= 0.3
        note = "; ".join(f"seed {s}: HV {hv[s]:.3f}×, CPU-s {cpu[s]:.3f}×, IGD {igd[s]:.3f}, "
                         f"vertex ≥ {vertex[s]:.1f} SE" for s in sorted(cells))
        out.append(row(f"15 λ: {name} HV ÷ {BASELINE} HV, median over seeds {sorted(cells)}", med, 1.0, target,
                       ok if len(cells) == len(SEEDS_15) else None, "×", med, note=note))
    return out


def seed_digest(overrides: list[str]) -> str:
    """What one seed's measurement depends on: pareto's source, the merged config and the overrides."""
    from pareto.cache import source_digest

    text = all_methods_yaml(METHODS_15)
    return hashlib.sha256("\0".join([source_digest(), text, *overrides]).encode()).hexdigest()[:16]


def run_15() -> dict[str, Any]:
    """One run per seed. Each finished seed is saved to results/fronts_15/seed_N.json as it ends (about 8 minutes
    a seed); PARETO_BENCH_RESUME=1 reuses a saved seed when it was measured by the same code and configs, so a
    killed benchmark resumes with the seeds it lacks."""
    seeds = [int(s) for s in os.environ.get("PARETO_BENCH_SEEDS", ",".join(map(str, SEEDS_15))).split(",")]
    resume = os.environ.get("PARETO_BENCH_RESUME") == "1"
    per_seed, details = {}, {}
    for seed in seeds:
        overrides = [f"seed={seed}", f"evaluation.grid_points={GRID_15}"]
        digest, saved = seed_digest(overrides), RESULTS / "fronts_15" / f"seed_{seed}.json"
        fronts = json.loads(saved.read_text()) if resume and saved.exists() else {}
        if fronts.get("digest") != digest:
            fronts = {**measure(overrides, METHODS_15, f"fronts_15_seed_{seed}"), "digest": digest}
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(fronts, indent=1))
        details[seed] = fronts
        if "failed" not in fronts:
            per_seed[seed] = fronts["methods"]
    return {"name": "fronts_15", "rows": rows_15(per_seed), "details": details}


def per_seed_table(per_seed: dict[int, dict[str, dict]]) -> str:
    """Markdown: per method × seed, HV, HV ÷ the baseline's, training CPU-s and its ratio, IGD, vertex separation."""
    lines = ["| method | seed | HV | HV ÷ per-weight | CPU-s | CPU-s ÷ per-weight | IGD | vertex separation (SE) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in (BASELINE, *TARGETS_15):
        for seed in sorted(per_seed):
            m, b = per_seed[seed].get(name), per_seed[seed].get(BASELINE)
            if m is None or b is None:
                continue
            lines.append(f"| {name} | {seed} | {m['hypervolume']:.4f} | {m['hypervolume'] / b['hypervolume']:.3f}× | "
                         f"{m['train_seconds']:.0f} | {m['train_seconds'] / b['train_seconds']:.3f}× | "
                         f"{m['igd']:.3f} | {min(m['vertex_separation']):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # the per-seed table of the saved 15-λ seeds (results/fronts_15/seed_N.json)
    saved = {int(p.stem.split("_")[1]): json.loads(p.read_text()) for p in (RESULTS / "fronts_15").glob("seed_*.json")}
    print(per_seed_table({seed: fronts["methods"] for seed, fronts in saved.items() if "methods" in fronts}))
