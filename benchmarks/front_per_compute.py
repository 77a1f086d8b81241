"""Benchmark 1: front quality per compute — every method's oracle hypervolume, IGD to the oracle front and
training CPU-seconds, against the per-weight DPO baseline (same λ grid, same run, same base and reward models).

One pipeline run (`pareto run` in a fresh PARETO_HOME) trains every offline method side by side: the quickstart
config (Panacea and the per-weight DPO baseline) plus the method sections of configs/ric.yaml, mah_dpo.yaml,
soups.yaml and modpo.yaml, so each method keeps the settings its own config gives it. The numbers are the ones
the pipeline records in each front's meta. $PARETO_BENCH_HOME reads an existing store instead (e.g. a finished
`pareto quickstart`). The target is about single-model (conditioned) methods; per-weight ones are informational.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import row, skipped

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


def all_methods_config(path: Path) -> Path:
    """The quickstart config with the method sections of the other offline methods' configs added."""
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    for name in METHOD_CONFIGS:
        cfg["methods"][name] = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["methods"][name]
    cfg["name"] = "front-per-compute"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run() -> dict[str, Any]:
    from benchmarks.common import SUBPROCESS_ENV
    from benchmarks.quickstart import read_fronts, run_measured

    home = os.environ.get("PARETO_BENCH_HOME")
    if home:
        fronts = {**read_fronts(Path(home)), "source": f"PARETO_HOME {home}"}
    else:
        with tempfile.TemporaryDirectory(prefix="pareto-bench-fpc-") as tmp:
            config = all_methods_config(Path(tmp) / "all_methods.yaml")
            env = {**os.environ, **SUBPROCESS_ENV, "PARETO_HOME": str(Path(tmp) / "home")}
            measured = run_measured([sys.executable, "-m", "pareto.cli", "run", str(config)], env,
                                    Path(tmp) / "run.log")
            if measured["returncode"] != 0:
                tail = (Path(tmp) / "run.log").read_text()[-2000:]
                return {"name": "front_per_compute", "rows": [skipped("front per compute", TARGET,
                                                                      f"exit {measured['returncode']}")],
                        "details": {"log_tail": tail}}
            fronts = {**read_fronts(Path(tmp) / "home"), "source": f"one run of {', '.join(METHOD_CONFIGS)} with "
                                                                   "the quickstart's methods",
                      "wall_seconds": measured["wall_seconds"]}
    return {"name": "front_per_compute", "rows": rows_for(fronts["methods"], fronts["run_id"][:8]), "details": fronts}
