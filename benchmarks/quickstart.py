"""Benchmarks 1 and 6: `pareto quickstart` end to end after install, and the front quality per compute it records.

The quickstart runs as a subprocess in a fresh PARETO_HOME (no SFT cache, so it is the first run after install);
a sampler thread sums the RSS of the whole process tree (driver, Ray raylet/GCS, workers, MLflow) every 0.25 s for
the peak. The fronts are then read back from the run's MLflow store (hypervolume, IGD, training seconds per method) and
kept in the JSON for benchmark 1 (front_per_compute).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, SUBPROCESS_ENV, row, skipped


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], env: dict[str, str], log: Path, interval: float = 0.25) -> dict[str, float]:
    """Wall seconds and peak process-tree RSS (GiB) of `cmd`; stdout+stderr go to `log`."""
    import psutil

    peak = 0
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        ps = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_rss(ps))
                stop.wait(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        rc = proc.wait()
        stop.set()
        thread.join()
    return {"returncode": rc, "wall_seconds": time.perf_counter() - start, "peak_rss_gib": peak / 2**30}


def measure_run(name: str, config: Path, extra: list[str], read: Callable[[Path], dict[str, Any]]
                ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`pareto run CONFIG EXTRA...` in a fresh state folder, measured (wall seconds, peak RSS, the log's tail), and
    `read(state folder)` when it succeeded. $PARETO_BENCH_KEEP keeps the state under KEEP/NAME (a UI screenshot, the
    run's front plots) instead of a temporary folder."""
    keep = os.environ.get("PARETO_BENCH_KEEP")
    with tempfile.TemporaryDirectory(prefix=f"pareto-bench-{name}-") as tmp:
        home = Path(keep) / name if keep else Path(tmp)
        if keep:
            home.mkdir(parents=True)  # a fresh state, as on a fresh clone: an existing folder is refused
        env = {**os.environ, **SUBPROCESS_ENV, "PARETO_HOME": str(home)}
        measured = run_measured([sys.executable, "-m", "pareto.cli", "run", str(config), *extra], env,
                                home / "run.log")
        measured["log_tail"] = (home / "run.log").read_text()[-4000:]
        return measured, (read(home) if measured["returncode"] == 0 else None)


def read_fronts(home: Path) -> dict[str, Any]:
    """Per-method oracle-front metrics and train seconds from the latest pipeline run in `home`."""
    from pareto import tracking

    uri = tracking.tracking_uri(None, home)
    run = tracking.find_run("latest", uri)
    fronts = {}
    for front in tracking.load_fronts(run, uri):
        meta = front.meta
        if front.scorer != "oracle":
            continue
        fronts.setdefault(front.method, {"hypervolume": front.metrics.get("hypervolume"),
                                         "igd": front.metrics.get("igd"), "points": len(front.points),
                                         "train_seconds": meta.get("train_seconds"),
                                         "models_trained": meta.get("models_trained"),
                                         "conditioned": meta.get("conditioned"),
                                         "vertex_separation": [float(x) for x in front.vertex_separation()]})
    return {"run_id": run.info.run_id, "methods": fronts}


def run(extra_args: list[str] | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pareto-bench-qs-") as tmp:
        home = Path(tmp)
        env = {**os.environ, **SUBPROCESS_ENV, "PARETO_HOME": str(home)}
        cmd = [sys.executable, "-m", "pareto.cli", "quickstart", *(extra_args or [])]
        measured = run_measured(cmd, env, home / "quickstart.log")
        log_tail = (home / "quickstart.log").read_text()[-3000:]
        if measured["returncode"] != 0:
            return {"name": "quickstart", "rows": [skipped("quickstart end to end", "≤ 600 s, ≤ 8 GiB",
                                                           f"exit {measured['returncode']}")],
                    "details": {**measured, "log_tail": log_tail}}
        fronts = read_fronts(home)
    rows = [row("quickstart wall time (s)", measured["wall_seconds"], 600.0, "≤ 600 s",
                measured["wall_seconds"] <= 600, "s"),
            row("quickstart peak RSS, process tree (GiB)", measured["peak_rss_gib"], 8.0, "≤ 8 GiB",
                measured["peak_rss_gib"] <= 8, "GiB")]
    return {"name": "quickstart", "rows": rows, "details": {**measured, **fronts, "log_tail": log_tail}}
