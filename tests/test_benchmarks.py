"""Smoke test of the benchmark plumbing: one cheap benchmark writes valid JSON, the table is rebuilt from it.
No timing asserts: only that the figures exist, are positive and are consistent with each other."""

from __future__ import annotations

import json

import pytest

from benchmarks import common, run, switch_latency


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    return tmp_path


def test_switch_latency_writes_valid_json(results_dir):
    result = switch_latency.run(n_fast=5, n_slow=2)
    path = common.write_result(result)
    data = json.loads(path.read_text())
    assert path == results_dir / "switch_latency.json"
    assert {"name", "rows", "details", "machine", "date"} <= set(data)
    for r in data["rows"]:
        assert {"figure", "value", "baseline", "ratio", "target", "verdict"} <= set(r)
        assert r["verdict"] in {"met", "missed", "info", "skipped"}
    ms = data["details"]["median_ms"]
    assert all(v > 0 for v in ms.values())
    load_row = next(r for r in data["rows"] if r["figure"].startswith("adapter load"))
    assert load_row["ratio"] == pytest.approx(ms["peft_load_adapter"] / ms["panacea_set_preference"], rel=1e-3)
    table = run.table()
    assert "| 3 | switch_latency | Panacea set_preference latency (ms) |" in table
    assert "| 1 | front_per_compute | not run yet |" in table


def test_row_verdicts():
    assert common.row("x", 2.0, 1.0, "≥ 1.5×", True)["ratio"] == 2.0
    assert common.row("x", 2.0, 1.0, "≥ 1.5×", False)["verdict"] == "missed"
    assert common.row("x", 1.0, None, "", None)["verdict"] == "info"


def test_unknown_benchmark_is_one_line_error(capsys):
    assert run.main(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_a_benchmark_that_points_mlflow_elsewhere_does_not_leak_into_the_next(tmp_path, monkeypatch) -> None:
    """`pareto bench` with no names: the Ray-overhead sweep's `mlflow.set_tracking_uri` (which exports
    MLFLOW_TRACKING_URI) used to send the quickstart and front-per-compute rows to its store."""
    import os

    import mlflow

    from benchmarks.run import isolated

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with isolated():
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'sweep.db'}")
        os.environ["PARETO_HOME"] = str(tmp_path)
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("sweep.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ and os.environ.get("PARETO_HOME") != str(tmp_path)
    assert "sweep.db" not in mlflow.get_tracking_uri()
