"""Shared helpers: timing by medians, machine description, result rows and the JSON files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def machine() -> str:
    """A one-line description: CPU model, cores, memory, GPU if torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    text = f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` calls after `warmup` untimed calls (medians resist noise)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(figure: str, value: float | None, baseline: float | None, target: str, ok: bool | None,
        unit: str = "", ratio: float | None = None, note: str = "") -> dict[str, Any]:
    """One table row; `ratio` defaults to value / baseline. `ok=None` means informational (no target)."""
    if ratio is None and value is not None and baseline:
        ratio = value / baseline
    verdict = "info" if ok is None else ("met" if ok else "missed")
    return {"figure": figure, "value": None if value is None else round(value, 6),
            "baseline": None if baseline is None else round(baseline, 6),
            "ratio": None if ratio is None else round(ratio, 4), "unit": unit, "target": target,
            "verdict": verdict, "note": note}


def skipped(figure: str, target: str, reason: str) -> dict[str, Any]:
    return {"figure": figure, "value": None, "baseline": None, "ratio": None, "unit": "", "target": target,
            "verdict": "skipped", "note": reason}


def write_result(result: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json with the machine and the UTC date added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    path = RESULTS / f"{result['name']}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def one_thread() -> None:
    """torch on one intra-op thread, as the pipeline's Ray tasks run (cpus_per_task=1): fair and less noisy."""
    import torch

    torch.set_num_threads(1)
