"""Serve a tracked run's front: pick the model for a preference λ, load it once, answer, score the answer.

Everything comes from MLflow (fronts, adapters, the base and reward models are artifacts of the run), so this
works on any machine that reaches the tracking server. No training code is imported.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from pareto import tracking
from pareto.adapters import adapter_dir
from pareto.front.grid import validate_weights
from pareto.front.types import Front, FrontPoint
from pareto.generation.backend import LoRABackend, is_lora_method, serving_config, serving_note
from pareto.models.conditioned import ConditionedPolicy, PerWeightPolicy, load_conditioned
from pareto.registry import parse_runs_uri

Scalarize = Callable[[np.ndarray, np.ndarray], np.ndarray]  # values (N, K), λ (K,) -> scores (N,), higher is better


def choose_point(points: Sequence[FrontPoint], objectives: Sequence[str], weights: object,
                 scalarize: Scalarize | None = None, scorer: str = "oracle") -> tuple[Front, FrontPoint]:
    """The one rule for "which model serves λ", used by `ServedRun.choose` (the UI), `pareto query` and, through a
    Choice, the vLLM export: among the candidates' non-dominated points, the one maximising the scalarization of
    its values under λ (linear by default; ties go to the earliest). Returns the candidates as a Front, and the
    point."""
    front = Front(method="candidates", objectives=tuple(objectives), points=tuple(points),
                  reference_point=(0.0,) * len(objectives), scorer=scorer)
    return front, front.query(weights, scalarize=scalarize)


def conditioned_point(front: Front, weights: np.ndarray, model_uri: str) -> FrontPoint:
    """A conditioned model as a candidate for λ: set to λ itself, offering the values it was evaluated at for the
    grid λ nearest (L1) to it."""
    nearest = front.points[int(np.argmin(np.abs(front.weights() - weights).sum(1)))]
    return FrontPoint(weights=tuple(weights), values=nearest.values, stderr=nearest.stderr, model_uri=model_uri,
                      extra={"evaluated_at": list(nearest.weights)})


@dataclass
class Choice:
    """Which model serves λ, and why."""

    method: str
    weights: tuple[float, ...]          # the λ asked for
    served_weights: tuple[float, ...]   # the λ the model is set to (equal for conditioned models)
    model_uri: str
    conditioned: bool
    reason: str
    point: FrontPoint | None = None     # the evaluated front point behind the choice (per-weight models)


@dataclass
class ServedRun:
    """A pipeline run's fronts and models, loaded lazily and kept: one load per model per process."""

    run_id: str
    tracking_uri: str
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "pareto-serving")
    fronts: dict[str, Front] = field(default_factory=dict)
    _policies: dict[str, ConditionedPolicy] = field(default_factory=dict, repr=False)
    _reward: object = field(default=None, repr=False)
    serving: object = None  # a config.ServingConfig; None = the run's logged `serving` section, else transformers
    _backend: LoRABackend | None = field(default=None, repr=False)
    _oracle: bool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        run = tracking.find_run(self.run_id, self.tracking_uri)
        self.run_id = run.info.run_id
        self.tags = dict(run.data.tags)
        self.params = dict(run.data.params)
        self.fronts = {f.method: f for f in tracking.load_fronts(run, self.tracking_uri)}

    @property
    def objectives(self) -> tuple[str, ...]:
        return next(iter(self.fronts.values())).objectives

    @property
    def has_oracle(self) -> bool:
        """True when the run's task has an oracle: a front scored by it, or a logged oracle front
        (`oracle/front.json`). A run on real data has reward-model fronts only, and its answers get no oracle score.
        """
        if self._oracle is None:
            self._oracle = any(f.scorer == "oracle" for f in self.fronts.values()) or any(
                a.path == "oracle/front.json" for a in MlflowClient(self.tracking_uri).list_artifacts(self.run_id,
                                                                                                     "oracle"))
        return self._oracle

    def is_conditioned(self, method: str) -> bool:
        return bool(self.fronts[method].meta.get("conditioned", method == "panacea"))

    # ---- choosing ------------------------------------------------------------------------------------------
    def choose(self, method: str, weights: object) -> Choice:
        if method not in self.fronts:
            raise KeyError(f"run {self.run_id} has no front for method {method!r}; it has {sorted(self.fronts)}")
        front = self.fronts[method]
        lam = tuple(float(x) for x in validate_weights(weights, front.k))
        if self.is_conditioned(method):  # one model: nothing to choose between
            uri = front.points[0].model_uri
            return Choice(method, lam, lam, uri, True,
                          f"{method} is one model for every preference: its λ is set to {_fmt(lam)} in place"
                          + serving_note(self, method))
        _, point = choose_point(front.points, front.objectives, lam, scorer=front.scorer)
        return Choice(method, lam, point.weights, point.model_uri, False,
                      f"{method} has one model per trained λ; the non-dominated point maximising λ·values "
                      f"for λ={_fmt(lam)} is the model trained at λ={_fmt(point.weights)}"
                      + serving_note(self, method), point)

    # ---- loading -------------------------------------------------------------------------------------------
    def artifact(self, uri: str) -> Path:
        """The artifact a runs:/ uri names (a front point's model), downloaded once into the serving cache."""
        return self._download(*parse_runs_uri(uri))

    def _download(self, run_id: str, artifact_path: str) -> Path:
        target = self.cache_dir / run_id / artifact_path
        if not (target / ".complete").is_file():
            target.mkdir(parents=True, exist_ok=True)
            MlflowClient(self.tracking_uri).download_artifacts(run_id, artifact_path, str(target.parent))
            (target / ".complete").write_text("ok")
        return target

    def base_dir(self) -> Path:
        """The run's base model: its logged files, or the folder / hub id its SOURCE.json reference names."""
        from pareto.models.sources import logged_base

        return Path(logged_base(self._download(self.run_id, "base_model")))

    def policy(self, choice: Choice) -> ConditionedPolicy:
        key = choice.model_uri
        if key not in self._policies:
            adapter = self.artifact(key)
            if choice.conditioned:
                kind = self.fronts[choice.method].meta.get("policy_kind", "panacea")  # older runs: Panacea only
                self._policies[key] = load_conditioned(kind, self.base_dir(), adapter, self.objectives)
            else:
                sub = adapter_dir(adapter)  # PEFT nests a named adapter one level down
                self._policies[key] = PerWeightPolicy.load(self.base_dir(), {sub.name: (choice.served_weights, sub)},
                                                           self.objectives)
        return self._policies[key]

    @property
    def decoding(self) -> dict[str, float]:
        """How the run's fronts were decoded (its logged `evaluation` section): served answers decode alike, so
        a user reads the kind of answer each front point was scored on."""
        return {"max_new_tokens": int(self.params.get("evaluation.max_new_tokens", 48)),
                "repetition_penalty": float(self.params.get("evaluation.repetition_penalty", 1.0))}

    def answer(self, method: str, prompt: str, weights: object,
               max_new_tokens: int | None = None) -> tuple[str, Choice]:
        choice = self.choose(method, weights)
        return self.respond(choice, prompt, max_new_tokens), choice

    def respond(self, choice: Choice, prompt: str, max_new_tokens: int | None = None) -> str:
        """The chosen model's answer (greedy, decoded as the run's fronts were; `max_new_tokens` overrides the
        run's): through vLLM for LoRA methods when `serving.backend` says so (the chosen point exported as a plain
        LoRA adapter), else with transformers."""
        gen = {**self.decoding, **({} if max_new_tokens is None else {"max_new_tokens": max_new_tokens})}
        backend = self.lora_backend(choice.method)
        if backend is not None:
            return backend.answer(choice, prompt, **gen)
        return self.policy(choice).generate([prompt], np.asarray(choice.served_weights), **gen)[0]

    def lora_backend(self, method: str) -> LoRABackend | None:
        """The configured vLLM backend when it serves `method` (a LoRA method), else None (transformers)."""
        cfg = serving_config(self)
        if cfg.backend == "hf" or not is_lora_method(self, method):
            return None
        if self._backend is None:
            self._backend = LoRABackend(self, cfg)
        return self._backend

    def close(self) -> None:
        """Stop a vLLM server this run started (serving.backend=vllm-server without a url)."""
        if self._backend is not None:
            self._backend.close()

    # ---- scoring -------------------------------------------------------------------------------------------
    def score(self, prompt: str, response: str) -> dict[str, dict[str, float]]:
        """The answer's per-objective scores: learned reward model (z-scores), and the oracle when the task has one
        (`has_oracle`: a run on real data, whatever its task's name, gets the reward model's scores only)."""
        from pareto.models.scorer import SourcedReward

        out: dict[str, dict[str, float]] = {}
        if self._reward is None:
            self._reward = SourcedReward.load(self._download(self.run_id, "reward_model"))
        rm = self._reward([prompt], [response])[0].tolist()
        out["reward_model"] = dict(zip(self._reward.names, rm, strict=True))
        task = self.tags.get("pareto.task")
        if task and self.has_oracle:
            from pareto.data import load_task

            try:
                t = load_task(task, seed=int(self.params.get("seed", 0)))
            except ValueError:
                return out  # a task this install does not know: no oracle to score with
            try:
                oracle = t.oracle_scores([prompt], [response])[0].tolist()
                out["oracle"] = {n: oracle[t.objectives.index(n)] for n in self.objectives}
            except ValueError:
                pass  # a prompt the synthetic task does not know has no oracle score
        return out

    def example_prompts(self, n: int = 12) -> list[str]:
        """Held-out prompts of the run's task (the oracle can score answers to these); empty without a task."""
        task = self.tags.get("pareto.task")
        if not task:
            return []
        from pareto.data import load_task

        try:
            prompts = load_task(task, seed=int(self.params.get("seed", 0))).prompts("eval")
        except ValueError:
            return []  # a task this install does not know
        return [p.text for p in prompts[:n]]


def _fmt(weights: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{w:.2f}" for w in weights) + ")"


def describe(choice: Choice) -> str:
    return json.dumps({"method": choice.method, "weights": choice.weights, "served_weights": choice.served_weights,
                       "model_uri": choice.model_uri, "reason": choice.reason})


COMPARE_COLUMNS = ("run", "method", "models trained", "training CPU-s", "hypervolume", "base", "IGD",
                   "inner product")


def compare_table(fronts: list[tuple[str, Front]]) -> list[dict[str, object]]:
    """The compare table, one row per (run label, front): what a front cost and what it is worth.

    Compute is the summed training CPU-seconds of the method's models (front.meta), so a conditioned model
    and a set of per-weight models compare on the same axis; metrics missing from a front read None. "base" is
    the base model's point (its per-objective means, by the front's scorer), None for a front without one.
    """
    rows = []
    for label, f in fronts:
        hv = f.metrics.get("hypervolume")
        rows.append(dict(zip(COMPARE_COLUMNS, (
            label, f.method, f.meta.get("models_trained"), f.meta.get("train_seconds"),
            float(hv) if hv is not None else f.hypervolume(), f.base_point.values if f.base_point else None,
            f.metrics.get("igd"), f.metrics.get("inner_product"),
        ), strict=True)))
    return rows
