"""The Model Registry against a real `mlflow server`: which models get registered, with which tags, read back with a
plain MlflowClient; registration is idempotent; a conditioned model is registered once with its λ range."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pareto import registry
from pareto.front.types import Front, FrontPoint

OBJ = ("helpful", "concise")


def _runs_with_adapters(uri: str, experiment: str, n: int, tmp: Path) -> tuple[str, list[str]]:
    """A parent run and n nested runs, each holding a small plain-file `adapter/` (as the pipeline logs them)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    children = []
    with mlflow.start_run(run_name="parent") as parent:
        for i in range(n):
            with mlflow.start_run(run_name=f"point-{i}", nested=True) as child:
                adapter = tmp / f"adapter-{i}" / "w0"
                adapter.mkdir(parents=True)
                (adapter / "adapter_config.json").write_text(json.dumps({"index": i}))
                mlflow.log_artifacts(str(adapter.parent), "adapter")
                children.append(child.info.run_id)
    return parent.info.run_id, children


def _per_weight_front(children: list[str]) -> Front:
    # Point 3 is dominated by point 1: (0.2, 0.5) < (0.6, 0.6).
    spec = [((1.0, 0.0), (0.9, 0.1)), ((0.5, 0.5), (0.6, 0.6)), ((0.0, 1.0), (0.1, 0.9)), ((0.3, 0.7), (0.2, 0.5))]
    points = tuple(FrontPoint(weights=w, values=v, stderr=(0.01, 0.02), model_uri=f"runs:/{run}/adapter")
                   for (w, v), run in zip(spec, children, strict=True))
    return Front(method="per_weight_dpo", objectives=OBJ, points=points, reference_point=(0.0, 0.0),
                 meta={"conditioned": False})


def test_non_dominated_points_are_registered_with_their_tags(mlflow_server: str, tmp_path: Path) -> None:
    parent, children = _runs_with_adapters(mlflow_server, "reg-pw", 4, tmp_path)
    front = _per_weight_front(children)
    out = registry.register_front(front, experiment="reg-pw", source_run_id=parent, tracking_uri=mlflow_server)
    assert [r.weights for r in out] == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]  # the dominated point is left out

    client = MlflowClient(mlflow_server)  # a plain client reads everything back
    versions = sorted(client.search_model_versions("name='pareto-reg-pw'"), key=lambda v: int(v.version))
    assert len(versions) == 3
    by_weights = {v.tags["weights"]: v for v in versions}
    assert set(by_weights) == {"[1.0, 0.0]", "[0.5, 0.5]", "[0.0, 1.0]"}
    mid = by_weights["[0.5, 0.5]"]
    assert mid.tags["method"] == "per_weight_dpo" and mid.tags["objectives"] == "helpful,concise"
    assert float(mid.tags["value.helpful"]) == 0.6 and float(mid.tags["value.concise"]) == 0.6
    assert float(mid.tags["stderr.concise"]) == 0.02 and mid.tags["conditioned"] == "false"
    assert mid.tags["source_run_id"] == parent and mid.tags["model_uri"] == f"runs:/{children[1]}/adapter"
    assert mid.run_id == children[1]
    # Aliases, not stages: the best point per objective.
    assert client.get_model_version_by_alias("pareto-reg-pw", "per_weight_dpo-best-helpful").tags["weights"] \
        == "[1.0, 0.0]"
    assert client.get_model_version_by_alias("pareto-reg-pw", "per_weight_dpo-best-concise").tags["weights"] \
        == "[0.0, 1.0]"
    # A version's files are the run's plain adapter files.
    local = mlflow.artifacts.download_artifacts(f"models:/pareto-reg-pw/{mid.version}", dst_path=str(tmp_path / "dl"))
    assert json.loads((Path(local) / "w0" / "adapter_config.json").read_text()) == {"index": 1}

    # Registering the same front again (a re-run registration, a resumed sweep) adds nothing.
    again = registry.register_front(front, experiment="reg-pw", source_run_id=parent, tracking_uri=mlflow_server)
    assert [r.version for r in again] == [r.version for r in out]
    assert len(client.search_model_versions("name='pareto-reg-pw'")) == 3
    listed = registry.list_registered("reg-pw", mlflow_server)
    assert [r.values for r in listed] == [(0.9, 0.1), (0.6, 0.6), (0.1, 0.9)]


def test_conditioned_model_is_registered_once_with_its_lambda_range(mlflow_server: str, tmp_path: Path) -> None:
    parent, (child,) = _runs_with_adapters(mlflow_server, "reg-cond", 1, tmp_path)
    grid = [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (1.0, 0.0)]
    points = tuple(FrontPoint(weights=w, values=(w[0], w[1]), stderr=(0.0, 0.0), model_uri=f"runs:/{child}/adapter")
                   for w in grid)
    front = Front(method="panacea", objectives=OBJ, points=points, reference_point=(0.0, 0.0),
                  meta={"conditioned": True})
    for _ in range(2):
        out = registry.register_front(front, experiment="reg-cond", source_run_id=parent, tracking_uri=mlflow_server)
        assert len(out) == 1
    client = MlflowClient(mlflow_server)
    (v,) = client.search_model_versions("name='pareto-reg-cond'")
    assert v.tags["conditioned"] == "true" and v.tags["method"] == "panacea"
    assert json.loads(v.tags["lambda_range"]) == {"low": [0.0, 0.0], "high": [1.0, 1.0]}
    assert v.tags["front_artifact"] == "fronts/panacea.json" and v.tags["grid_points"] == "4"
    assert "weights" not in v.tags  # one model for every λ, not a point
    assert client.get_model_version_by_alias("pareto-reg-cond", "panacea").version == v.version
    assert out[0].lambda_low == (0.0, 0.0) and out[0].lambda_high == (1.0, 1.0)


def test_points_without_a_run_adapter_are_skipped(mlflow_server: str, tmp_path: Path) -> None:
    parent, children = _runs_with_adapters(mlflow_server, "reg-skip", 1, tmp_path)
    points = (FrontPoint(weights=(1.0, 0.0), values=(1.0, 0.0), stderr=(0.0, 0.0), model_uri=""),
              FrontPoint(weights=(0.0, 1.0), values=(0.0, 1.0), stderr=(0.0, 0.0),
                         model_uri=f"runs:/{children[0]}/adapter"))
    front = Front(method="per_weight_dpo", objectives=OBJ, points=points, reference_point=(0.0, 0.0))
    out = registry.register_front(front, experiment="reg-skip", source_run_id=parent, tracking_uri=mlflow_server)
    assert [r.weights for r in out] == [(0.0, 1.0)]


def test_unknown_experiment_is_a_clear_error(mlflow_server: str) -> None:
    with pytest.raises(LookupError, match="no registered model 'pareto-nope'.*pareto sweep"):
        registry.list_registered("nope", mlflow_server)
