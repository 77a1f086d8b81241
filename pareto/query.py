"""The front as a service: which registered model serves a preference λ best, why, and its answer.

`choose(experiment, λ)` reads the experiment's registered models (tags, plus a conditioned model's front) and
builds one candidate per model: a per-weight model offers the objective values it was evaluated at; a
conditioned model, set to λ itself, offers its evaluated values at the grid λ nearest to the one asked. Among the
non-dominated candidates it picks the one maximising the chosen scalarization of those values under λ, by the
rule the UI's `ServedRun.choose` uses too (`pareto.serving.choose_point`), and says which and why.
`answer(...)` answers through that model's `ServedRun` (loaded once per process), so `serving.backend` (vLLM or
transformers) applies to `pareto query` as it does to the UI.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from pareto.front.grid import validate_weights
from pareto.front.types import Front, FrontPoint
from pareto.objectives.scalarize import linear, tchebycheff
from pareto.registry import RegisteredModel, list_registered
from pareto.serving import Choice, ServedRun, choose_point, conditioned_point

SCALARIZATIONS = ("linear", "tchebycheff")


@dataclass(frozen=True)
class QueryChoice:
    """The registered model chosen for λ, and why."""

    model: RegisteredModel
    weights: tuple[float, ...]          # the λ asked for
    served_weights: tuple[float, ...]   # the λ the model runs at (λ itself for a conditioned model)
    expected: tuple[float, ...]         # objective values the model was evaluated at for (about) this λ
    score: float                        # the scalarization of `expected` under λ
    scalarization: str
    candidates: int                     # candidates considered (non-dominated or not)
    reason: str

    @property
    def label(self) -> str:
        return f"{self.model.name} v{self.model.version}"

    def to_dict(self) -> dict:
        return {"registered_model": self.model.name, "version": self.model.version, "model_uri": self.model.uri,
                "method": self.model.method, "conditioned": self.model.conditioned,
                "weights": list(self.weights), "served_weights": list(self.served_weights),
                "expected": dict(zip(self.model.objectives, self.expected, strict=True)), "score": self.score,
                "scalarization": self.scalarization, "reason": self.reason}


@dataclass(frozen=True)
class QueryAnswer:
    text: str
    choice: QueryChoice


def _scalarizer(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """values (N, K), λ (K,) -> scores (N,), higher is better; the project's scalarizers (pareto.objectives)."""
    if name not in SCALARIZATIONS:
        raise ValueError(f"scalarization {name!r} is unknown; use one of {list(SCALARIZATIONS)}")

    def score(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        v, w = torch.as_tensor(values, dtype=torch.float64), torch.as_tensor(weights, dtype=torch.float64)
        if name == "linear":
            return linear(v, w).numpy()
        # Tchebycheff around the candidates' utopia point: −max_i λ_i (z_i − v_i).
        return tchebycheff(v, w, ideal=v.max(0).values.expand_as(v)).numpy()

    return score


def _conditioned_front(model: RegisteredModel, tracking_uri: str, cache: dict) -> Front:
    key = (tracking_uri, model.source_run_id, model.front_artifact)
    if key not in cache:
        with tempfile.TemporaryDirectory() as tmp:
            path = MlflowClient(tracking_uri).download_artifacts(model.source_run_id, model.front_artifact, tmp)
            cache[key] = Front.from_json(Path(path).read_text())
    return cache[key]


_FRONTS: dict = {}


def candidates(models: list[RegisteredModel], weights: np.ndarray,
               tracking_uri: str) -> list[tuple[RegisteredModel, FrontPoint]]:
    """(model, front point) per registered model, as it would serve λ = `weights`; model_uri = models:/name/version."""
    points = []
    for m in models:
        if m.conditioned:
            points.append((m, conditioned_point(_conditioned_front(m, tracking_uri, _FRONTS), weights, m.uri)))
        elif m.values is not None and m.weights is not None:
            points.append((m, FrontPoint(weights=m.weights, values=m.values,
                                         stderr=m.stderr or (0.0,) * len(m.values), model_uri=m.uri)))
    return points


def choose(experiment: str, weights: object, tracking_uri: str, scalarization: str = "linear",
           method: str | None = None, scorer: str | None = None,
           models: list[RegisteredModel] | None = None) -> QueryChoice:
    """The registered model of `experiment` that serves λ = `weights` best (see the module docstring)."""
    score_fn = _scalarizer(scalarization)
    models = list_registered(experiment, tracking_uri) if models is None else models
    if not models:
        raise LookupError(f"experiment {experiment!r} has no registered models yet")
    objectives = models[-1].objectives
    lam = validate_weights(weights, len(objectives))
    scorer = scorer or models[-1].scorer  # values are comparable only within one scorer
    pool = [m for m in models if m.scorer == scorer and m.objectives == objectives
            and (method is None or m.method == method)]
    if not pool:
        have = sorted({(m.method, m.scorer) for m in models})
        raise LookupError(f"no registered model of {experiment!r} with method={method!r}, scorer={scorer!r}; "
                          f"registered (method, scorer): {have}")
    pool.sort(key=lambda m: -int(m.version))  # ties go to the newest registration
    pairs = candidates(pool, lam, tracking_uri)
    pool, points = [m for m, _ in pairs], [p for _, p in pairs]
    front, best = choose_point(points, objectives, lam, scalarize=score_fn, scorer=scorer)
    scores = score_fn(front.values(), lam)
    chosen_index = points.index(best)
    model = pool[chosen_index]
    nd = front.nondominated_mask()
    runner = [i for i in np.argsort(-scores) if nd[i] and i != chosen_index]
    lam_t = tuple(float(x) for x in lam)
    if model.conditioned:
        how = (f"{model.method} is one model for every λ (registered with λ range low={list(model.lambda_low)}, "
               f"high={list(model.lambda_high)}); it is set to λ={_fmt(lam_t)} and was evaluated at "
               f"λ={_fmt(tuple(best.extra['evaluated_at']))}")
    else:
        how = f"{model.method} model trained at λ={_fmt(model.weights)}"
    why = (f"{how}: its {scorer} values {_fmt(best.values)} give the highest {scalarization} score "
           f"{scores[chosen_index]:.4f} for λ={_fmt(lam_t)} among {int(nd.sum())} non-dominated of "
           f"{len(points)} registered candidates")
    if runner:
        r = runner[0]
        why += f" (runner-up v{pool[r].version}: {scores[r]:.4f})"
    served = lam_t if model.conditioned else tuple(model.weights)
    return QueryChoice(model, lam_t, served, best.values, float(scores[chosen_index]), scalarization, len(points),
                       why)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


# ---- answering: the serving machinery, one load per model per process ---------------------------------------------
_SERVED: dict = {}


def served_run(source_run_id: str, tracking_uri: str) -> ServedRun:
    key = (tracking_uri, source_run_id)
    if key not in _SERVED:
        _SERVED[key] = ServedRun(source_run_id, tracking_uri)
    return _SERVED[key]


def served_choice(choice: QueryChoice) -> Choice:
    """A registry choice as the serving Choice of its source run (the adapter's runs:/ uri, λ it runs at)."""
    m = choice.model
    return Choice(m.method, choice.weights, choice.served_weights, m.model_uri, m.conditioned, choice.reason)


def policy_for(choice: QueryChoice, tracking_uri: str):
    """The loaded ConditionedPolicy behind a choice (base model and adapter come from MLflow, cached)."""
    return served_run(choice.model.source_run_id, tracking_uri).policy(served_choice(choice))


def answer(experiment: str, weights: object, prompt: str, tracking_uri: str, scalarization: str = "linear",
           method: str | None = None, max_new_tokens: int | None = None) -> QueryAnswer:
    """Choose the model for λ and generate its answer to `prompt` (greedy, so the answer is reproducible; decoded
    as the run's fronts were, `max_new_tokens` overriding the run's)."""
    choice = choose(experiment, weights, tracking_uri, scalarization, method)
    served = served_run(choice.model.source_run_id, tracking_uri)
    return QueryAnswer(served.respond(served_choice(choice), prompt, max_new_tokens), choice)
