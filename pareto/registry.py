"""The MLflow Model Registry as the catalogue of a front's models.

One registered model per experiment (`pareto-<experiment>`). Every non-dominated per-weight model of a run or a
sweep becomes a version; a conditioned model (one model for every λ) is registered once, with the λ range it
serves. A version points at the run's plain adapter files (PEFT `save_pretrained` output), never at an
`mlflow.transformers` model (which reloads PEFT models with wrong base weights), and carries the tags a query
needs: `method`, `weights`, `objectives`, `value.<objective>` (and `stderr.<objective>`), `scorer`, the run that
holds the base model and the front, and for conditioned models `lambda_range` and `front_artifact`.

Aliases (the stages API is deprecated) name the newest conditioned model of each method (`<method>`) and the
newest registration's best model per objective (`<method>-best-<objective>`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pareto.front.types import Front, FrontPoint

MODEL_PREFIX = "pareto-"
_log = logging.getLogger(__name__)


def model_name(experiment: str) -> str:
    """The registered model that holds an experiment's Pareto-optimal models."""
    return f"{MODEL_PREFIX}{experiment}"


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model version, read back from its tags."""

    name: str
    version: str
    method: str
    conditioned: bool
    objectives: tuple[str, ...]
    model_uri: str                           # runs:/<run>/adapter: the plain adapter files
    source_run_id: str                       # the pipeline or sweep run with the base model and the fronts
    scorer: str
    weights: tuple[float, ...] | None = None   # per-weight: the λ it was trained at
    values: tuple[float, ...] | None = None    # per-weight: its evaluated objective means
    stderr: tuple[float, ...] | None = None
    lambda_low: tuple[float, ...] | None = None   # conditioned: the λ box it was evaluated on
    lambda_high: tuple[float, ...] | None = None
    front_artifact: str | None = None        # conditioned: its front, an artifact of source_run_id
    tags: dict = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @classmethod
    def from_version(cls, mv) -> RegisteredModel:
        t = dict(mv.tags)
        objectives = tuple(t["objectives"].split(","))
        conditioned = t.get("conditioned") == "true"

        def vec(prefix: str) -> tuple[float, ...] | None:
            keys = [f"{prefix}.{o}" for o in objectives]
            return tuple(float(t[k]) for k in keys) if all(k in t for k in keys) else None

        lam = json.loads(t["lambda_range"]) if "lambda_range" in t else None
        return cls(name=mv.name, version=str(mv.version), method=t["method"], conditioned=conditioned,
                   objectives=objectives, model_uri=t["model_uri"], source_run_id=t["source_run_id"],
                   scorer=t.get("scorer", "oracle"),
                   weights=tuple(json.loads(t["weights"])) if "weights" in t else None,
                   values=vec("value"), stderr=vec("stderr"),
                   lambda_low=tuple(lam["low"]) if lam else None, lambda_high=tuple(lam["high"]) if lam else None,
                   front_artifact=t.get("front_artifact"), tags=t)


def _ensure_model(client: MlflowClient, name: str, experiment: str, objectives: tuple[str, ...]) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, tags={"experiment": experiment, "objectives": ",".join(objectives)},
                description=f"Pareto-optimal models of experiment {experiment!r} "
                            f"(objectives {', '.join(objectives)}); see `pareto query --experiment {experiment}`")
        except MlflowException:
            pass  # created concurrently: fine, it exists now


def parse_runs_uri(uri: str) -> tuple[str, str]:
    """`runs:/<run id>/<artifact path>` -> (run id, artifact path); the one parser of front points' model uris."""
    if not uri.startswith("runs:/"):
        raise ValueError(f"model uri {uri!r} is not a runs:/ uri")
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    return run_id, path


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest exact round-trip form


def _point_tags(front: Front, point: FrontPoint) -> dict[str, str]:
    tags = {"weights": json.dumps(list(point.weights))}
    for name, value, err in zip(front.objectives, point.values, point.stderr, strict=True):
        tags[f"value.{name}"] = _fmt(value)
        tags[f"stderr.{name}"] = _fmt(err)
    return tags


def register_front(front: Front, *, experiment: str, source_run_id: str, tracking_uri: str,
                   kind: str = "pipeline", point_tags: Mapping[str, Mapping[str, str]] | None = None
                   ) -> list[RegisteredModel]:
    """Register the models behind `front`: its non-dominated points, or its one conditioned model.

    `source_run_id` is the run holding the base model (`base_model/`) and the front (`fronts/<method>.json`).
    `point_tags` maps a point's model uri to extra tags (e.g. its Optuna trial number). A model uri that is
    already registered is not registered again (a re-run registration, a resumed sweep).
    """
    client = MlflowClient(tracking_uri)
    name = model_name(experiment)
    _ensure_model(client, name, experiment, front.objectives)
    existing = {mv.tags.get("model_uri"): mv for mv in client.search_model_versions(f"name='{name}'")}
    conditioned = bool(front.meta.get("conditioned", False))
    common = {"method": front.method, "objectives": ",".join(front.objectives), "scorer": front.scorer,
              "conditioned": str(conditioned).lower(), "source_run_id": source_run_id, "kind": kind}
    if conditioned:
        uris = {p.model_uri for p in front.points}
        if len(uris) != 1:
            raise ValueError(f"conditioned front {front.method!r} names {len(uris)} models; expected one")
        w = front.weights()
        wanted = [(front.points[0], {
            "lambda_range": json.dumps({"low": w.min(0).tolist(), "high": w.max(0).tolist()}),
            "front_artifact": f"fronts/{front.method}.json",
            "hypervolume": _fmt(front.metrics.get("hypervolume", front.hypervolume())),
            "grid_points": str(len(front.points))})]
    else:
        wanted = [(p, _point_tags(front, p))
                  for p, keep in zip(front.points, front.nondominated_mask(), strict=True) if keep]
    out = []
    for point, tags in wanted:
        uri = point.model_uri
        if not uri.startswith("runs:/"):
            _log.warning("registry: %s point λ=%s has no runs:/ model uri (%r); not registered",
                         front.method, list(point.weights), uri)
            continue
        mv = existing.get(uri)
        if mv is None:
            all_tags = {**common, **tags, "model_uri": uri, **dict((point_tags or {}).get(uri, {}))}
            desc = (f"{front.method}: one model for every λ in the box {tags['lambda_range']}" if conditioned
                    else f"{front.method} trained at λ={list(point.weights)}; non-dominated in its {kind}")
            mv = client.create_model_version(name, source=uri, run_id=parse_runs_uri(uri)[0], tags=all_tags,
                                             description=desc)
        out.append(RegisteredModel.from_version(client.get_model_version(name, str(mv.version))))
    _set_aliases(client, name, out)
    return out


def register_fronts(fronts: Iterable[Front], **kwargs) -> list[RegisteredModel]:
    return [r for f in fronts for r in register_front(f, **kwargs)]


def _set_aliases(client: MlflowClient, name: str, registered: list[RegisteredModel]) -> None:
    """`<method>` → the conditioned model; `<method>-best-<objective>` → the point best in that objective."""
    for r in registered:
        if r.conditioned:
            client.set_registered_model_alias(name, _alias(r.method), r.version)
    points = [r for r in registered if not r.conditioned and r.values is not None]
    for i, objective in enumerate(points[0].objectives if points else ()):
        best = max(points, key=lambda r: r.values[i])
        client.set_registered_model_alias(name, _alias(f"{best.method}-best-{objective}"), best.version)


def _alias(text: str) -> str:
    # Aliases allow letters, digits, '_' and '-' only.
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in text)


def list_registered(experiment: str, tracking_uri: str) -> list[RegisteredModel]:
    """Every registered version of an experiment's model, oldest first."""
    client = MlflowClient(tracking_uri)
    name = model_name(experiment)
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise LookupError(f"no registered model {name!r} at {tracking_uri}: run `pareto run` or `pareto sweep` "
                          f"for experiment {experiment!r} first (with tracking.registry on)") from None
    versions = client.search_model_versions(f"name='{name}'")
    return sorted((RegisteredModel.from_version(mv) for mv in versions if "model_uri" in mv.tags),
                  key=lambda r: int(r.version))
