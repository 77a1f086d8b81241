"""Benchmark 1: front quality per compute — every method's oracle hypervolume, IGD to the oracle front and
training seconds from a real quickstart pipeline run, against the per-weight DPO baseline (same λ grid).

The numbers are the ones the pipeline records in each front's meta (MLflow artifacts fronts/<method>.json):
by default from the store of the latest `quickstart` benchmark (benchmarks/results/quickstart.json), or from
any PARETO_HOME given as $PARETO_BENCH_HOME (e.g. a finished `pareto quickstart`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, row, skipped

BASELINE = "per_weight_dpo"
TARGET = "HV ≥ 0.95× and train s ≤ 0.3× of per-weight DPO"


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
        out.append(row(f"front per compute: {name} HV ÷ {BASELINE} HV ({m['points']} λ)", m["hypervolume"],
                       base["hypervolume"], TARGET, hv >= 0.95 and compute <= 0.3, "HV", hv,
                       note=f"train {m['train_seconds']:.0f} s vs {base['train_seconds']:.0f} s = {compute:.2f}×; "
                            f"IGD {m['igd']:.3f} vs {base['igd']:.3f}; {m['models_trained']} vs "
                            f"{base['models_trained']} models; run {run_id}"))
    return out


def run() -> dict[str, Any]:
    home = os.environ.get("PARETO_BENCH_HOME")
    if home:
        from benchmarks.quickstart import read_fronts

        fronts = {**read_fronts(Path(home)), "source": f"PARETO_HOME {home}"}
    else:
        saved = RESULTS / "quickstart.json"
        if not saved.exists():
            return {"name": "front_per_compute", "rows": [skipped("front per compute", TARGET,
                                                                  "run the quickstart benchmark first")],
                    "details": {}}
        details = json.loads(saved.read_text())["details"]
        if "methods" not in details:
            return {"name": "front_per_compute", "rows": [skipped("front per compute", TARGET,
                                                                  "the quickstart benchmark did not finish")],
                    "details": {}}
        fronts = {"run_id": details["run_id"], "methods": details["methods"], "source": "quickstart benchmark"}
    return {"name": "front_per_compute", "rows": rows_for(fronts["methods"], fronts["run_id"][:8]), "details": fronts}
