"""The GPU check (scripts/gpu_check.sh): hh_smol end to end on one GPU, per-stage timings and peak GPU memory.

It needs a machine with a CUDA GPU. Without one, this benchmark keeps the row of the last GPU run (copied from
the script's `gpu_check.json` into benchmarks/results/), or says that it has not run on a GPU yet.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, row, skipped


def run() -> dict[str, Any]:
    import torch

    previous = RESULTS / "gpu_check.json"
    if not torch.cuda.is_available():
        kept = json.loads(previous.read_text()) if previous.exists() else None
        if kept and any(r["verdict"] != "skipped" for r in kept["rows"]):  # a real GPU run's row
            return kept
        return {"name": "gpu_check", "rows": [skipped(
            "hh_smol (Panacea-DPO) and ten Panacea-GRPO steps with vLLM rollouts on one GPU (scripts/gpu_check.sh)",
            "runs, minutes", "not run on a GPU yet: no GPU on the machines that ran this")], "details": {}}
    with tempfile.TemporaryDirectory(prefix="pareto-gpu-check-") as tmp:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", tmp], cwd=ROOT,
                              capture_output=True, text=True)
        report = Path(tmp) / "gpu_check.json"
        if proc.returncode != 0 or not report.exists():
            return {"name": "gpu_check", "rows": [skipped("hh_smol on one GPU", "runs", f"exit {proc.returncode}")],
                    "details": {"log_tail": (proc.stdout + proc.stderr)[-4000:]}}
        details = json.loads(report.read_text())
    wall = details.get("wall_seconds")
    return {"name": "gpu_check", "rows": [row("hh_smol on one GPU, wall (s)", wall, None, "minutes", None, "s",
                                              note=str(details.get("device", "")))], "details": details}
