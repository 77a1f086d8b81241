"""The search space of a sweep: λ as K raw weights normalised onto the simplex, plus a method's hyper-parameters,
as Optuna distributions and as pymoo's real box (`pareto.distributed.sweep`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from pareto.config import ExperimentConfig, SearchRange


class SearchSpace:
    """λ as K raw weights in [0, 1] normalised onto the simplex, plus the method's hyper-parameters.

    The same space serves Optuna (distributions) and pymoo (a box [xl, xu] with an encoding of each parameter).
    """

    def __init__(self, objectives: tuple[str, ...], params: dict[str, SearchRange], int_keys: set[str]) -> None:
        self.objectives = objectives
        self.params = params
        self.int_keys = int_keys
        self.weight_keys = [f"w_{o}" for o in objectives]

    def distributions(self) -> dict[str, BaseDistribution]:
        dists: dict[str, BaseDistribution] = {k: FloatDistribution(0.0, 1.0) for k in self.weight_keys}
        for key, rng in self.params.items():
            if rng.choices is not None:
                dists[key] = CategoricalDistribution(list(rng.choices))
            elif key in self.int_keys:
                dists[key] = IntDistribution(int(rng.low), int(rng.high), log=rng.log)
            else:
                dists[key] = FloatDistribution(rng.low, rng.high, log=rng.log)
        return dists

    def weights(self, params: dict[str, Any]) -> list[float]:
        raw = np.array([float(params[k]) for k in self.weight_keys])
        total = raw.sum()
        lam = raw / total if total > 0 else np.full(len(raw), 1.0 / len(raw))
        return lam.tolist()

    def hyper(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: params[k] for k in self.params}

    def defaults(self, lam: np.ndarray, method_cfg: Any) -> dict[str, Any]:
        """Trial parameters for a grid λ: the method's configured hyper-parameters where they are in range."""
        out: dict[str, Any] = {k: float(v) for k, v in zip(self.weight_keys, lam, strict=True)}
        for key, rng in self.params.items():
            value = getattr(method_cfg, key)
            inside = value in rng.choices if rng.choices is not None else rng.low <= value <= rng.high
            if inside:
                out[key] = value
        return out

    # pymoo: every parameter is a real variable; choices are indices, log ranges live in log space.
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = [0.0] * len(self.weight_keys), [1.0] * len(self.weight_keys)
        for rng in self.params.values():
            if rng.choices is not None:
                lo.append(0.0)
                hi.append(float(len(rng.choices)) - 1e-9)
            elif rng.log:
                lo.append(math.log(rng.low))
                hi.append(math.log(rng.high))
            else:
                lo.append(float(rng.low))
                hi.append(float(rng.high))
        return np.array(lo), np.array(hi)

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {k: float(np.clip(v, 0.0, 1.0)) for k, v in zip(self.weight_keys, x, strict=False)}
        for key, v in zip(self.params, x[len(self.weight_keys):], strict=True):
            rng = self.params[key]
            if rng.choices is not None:
                out[key] = rng.choices[int(np.clip(math.floor(v), 0, len(rng.choices) - 1))]
                continue
            value = math.exp(v) if rng.log else float(v)
            value = min(max(value, rng.low), rng.high)
            out[key] = int(round(value)) if key in self.int_keys else value
        return out

    def encode(self, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """A pymoo row for (possibly partial) trial parameters; missing ones are drawn uniformly in the box."""
        lo, hi = self.bounds()
        x = rng.uniform(lo, hi)
        for i, key in enumerate(self.weight_keys):
            if key in params:
                x[i] = params[key]
        for j, (key, srange) in enumerate(self.params.items(), start=len(self.weight_keys)):
            if key not in params:
                continue
            v = params[key]
            if srange.choices is not None:
                x[j] = srange.choices.index(v) + 0.5
            else:
                x[j] = math.log(v) if srange.log else float(v)
        return x


def search_space(cfg: ExperimentConfig) -> SearchSpace:
    sw = cfg.sweep
    mcfg = getattr(cfg.methods, sw.method)
    fields = type(mcfg).model_fields
    return SearchSpace(tuple(cfg.objectives), dict(sw.params), {k for k in sw.params if fields[k].annotation is int})
