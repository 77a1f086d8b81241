"""Front data types: ``FrontPoint`` and ``Front`` (immutable, JSON round-trippable).

Kept whole (just over 400 lines): the two types validate, compute and round-trip to JSON together (a
front's JSON nests its points), so a split would cut one data type's code in two.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .metrics import difference_stderr, front_metrics, hypervolume, non_dominated_mask, vertex_separation

__all__ = ["FrontPoint", "Front", "SCHEMA"]

SCHEMA = "pareto.front/1"

_POINT_FIELDS = ("weights", "values", "stderr", "model_uri", "extra")
_FRONT_FIELDS = ("method", "objectives", "points", "reference_point", "scorer", "metrics", "meta", "base_point")


def _float_tuple(x: Any, where: str, *, nonneg: bool = False) -> tuple[float, ...]:
    if isinstance(x, (str, bytes, Mapping)):
        raise ValueError(f"{where}: expected a sequence of numbers, got {type(x).__name__}")
    try:
        seq = list(x.tolist() if isinstance(x, np.ndarray) else x)
    except TypeError:
        raise ValueError(f"{where}: expected a sequence of numbers, got {type(x).__name__}") from None
    out = []
    for i, v in enumerate(seq):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{where}[{i}]: expected a number, got {v!r}")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{where}[{i}]: must be finite, got {f}")
        if nonneg and f < 0:
            raise ValueError(f"{where}[{i}]: must be >= 0, got {f}")
        out.append(f)
    return tuple(out)


def _check_dict(x: Any, where: str) -> dict:
    if not isinstance(x, dict):
        raise ValueError(f"{where}: expected a dict, got {type(x).__name__}")
    return x


def _check_str(x: Any, where: str) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{where}: expected a string, got {type(x).__name__}")
    return x


@dataclass(frozen=True)
class FrontPoint:
    """One evaluated point: the preference it was trained/queried at and its objective values.

    ``values`` are means over the evaluation prompts (maximised), ``stderr`` their standard errors;
    ``extra["scores"]``, when present, holds the per-prompt scores ``[n, K]`` that two points answered on the same
    prompts are compared by (paired standard errors, :meth:`per_prompt_scores`). The base
    model's point (:attr:`Front.base_point`) has no preference: its ``weights`` is the empty tuple
    (:meth:`FrontPoint.base` builds one).
    """

    weights: tuple[float, ...]
    values: tuple[float, ...]
    stderr: tuple[float, ...]
    model_uri: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate("FrontPoint")

    @classmethod
    def base(cls, values: Any, stderr: Any, model_uri: str = "", extra: dict | None = None) -> FrontPoint:
        """The untrained base model's point: its mean scores and standard errors, no preference (``weights=()``)."""
        return cls((), values, stderr, model_uri, dict(extra or {}))

    def per_prompt_scores(self) -> np.ndarray | None:
        """The per-prompt scores ``[n, K]`` behind ``values``, or None when the writer did not keep them."""
        scores = self.extra.get("scores")
        if scores is None:
            return None
        arr = np.asarray(scores, dtype=np.float64)
        return arr if arr.ndim == 2 and arr.shape[1] == len(self.values) else None

    @property
    def is_base(self) -> bool:
        """True for a base-model point (no preference weights)."""
        return len(self.weights) == 0

    def _validate(self, where: str) -> None:
        w = _float_tuple(self.weights, f"{where}.weights", nonneg=True)
        v = _float_tuple(self.values, f"{where}.values")
        s = _float_tuple(self.stderr, f"{where}.stderr", nonneg=True)
        if len(v) == 0:
            raise ValueError(f"{where}.values: must not be empty")
        if len(w) not in (0, len(v)):  # empty: the base model's point, which has no preference
            raise ValueError(f"{where}.weights: has {len(w)} entries but values has {len(v)}")
        if len(s) != len(v):
            raise ValueError(f"{where}.stderr: has {len(s)} entries but values has {len(v)}")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "stderr", s)
        _check_str(self.model_uri, f"{where}.model_uri")
        _check_dict(self.extra, f"{where}.extra")

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": list(self.weights),
            "values": list(self.values),
            "stderr": list(self.stderr),
            "model_uri": self.model_uri,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "FrontPoint") -> FrontPoint:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected a dict, got {type(d).__name__}")
        for key in d:
            if key not in _POINT_FIELDS:
                raise ValueError(f"{where}: unknown field {key!r}")
        for key in ("weights", "values", "stderr"):
            if key not in d:
                raise ValueError(f"{where}: missing field {key!r}")
        obj = cls.__new__(cls)
        object.__setattr__(obj, "weights", d["weights"])
        object.__setattr__(obj, "values", d["values"])
        object.__setattr__(obj, "stderr", d["stderr"])
        object.__setattr__(obj, "model_uri", d.get("model_uri", ""))
        object.__setattr__(obj, "extra", dict(_check_dict(d.get("extra", {}), f"{where}.extra")))
        obj._validate(where)
        return obj


@dataclass(frozen=True)
class Front:
    """A set of evaluated points for one method, with the fixed reference point used for hypervolume.

    ``metrics`` is filled by :meth:`compute_metrics`; ``meta`` holds free-form run information (run ids,
    config hashes). Both must be JSON-serialisable for :meth:`to_json`.

    ``base_point`` is the untrained base model's point: its mean scores and standard errors on the same
    evaluation prompts by the same scorer (a :class:`FrontPoint` with ``weights=()``), or None. It shows where
    training started; it is not one of ``points`` and takes no part in the non-dominated filter, the
    hypervolume or any other metric of the front (see :meth:`gain_over_base`).
    """

    method: str
    objectives: tuple[str, ...]
    points: tuple[FrontPoint, ...]
    reference_point: tuple[float, ...]
    scorer: str = "oracle"
    metrics: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    base_point: FrontPoint | None = None

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        _check_str(self.method, "Front.method")
        _check_str(self.scorer, "Front.scorer")
        if isinstance(self.objectives, (str, bytes)) or not hasattr(self.objectives, "__iter__"):
            raise ValueError(
                f"Front.objectives: expected a sequence of names, got {type(self.objectives).__name__}"
            )
        objectives = tuple(self.objectives)
        if not objectives:
            raise ValueError("Front.objectives: must not be empty")
        for i, name in enumerate(objectives):
            _check_str(name, f"Front.objectives[{i}]")
        if len(set(objectives)) != len(objectives):
            raise ValueError(f"Front.objectives: duplicate names in {objectives}")
        k = len(objectives)
        ref = _float_tuple(self.reference_point, "Front.reference_point")
        if len(ref) != k:
            raise ValueError(f"Front.reference_point: has {len(ref)} entries but there are {k} objectives")
        if isinstance(self.points, (str, bytes, Mapping)) or not hasattr(self.points, "__iter__"):
            raise ValueError(
                f"Front.points: expected a sequence of FrontPoint, got {type(self.points).__name__}"
            )
        points = tuple(self.points)
        for i, p in enumerate(points):
            if not isinstance(p, FrontPoint):
                raise ValueError(f"Front.points[{i}]: expected FrontPoint, got {type(p).__name__}")
            if len(p.values) != k:
                raise ValueError(f"Front.points[{i}].values: has {len(p.values)} entries, expected {k}")
            if p.is_base:
                raise ValueError(f"Front.points[{i}].weights: empty; only Front.base_point has no preference")
        base = self.base_point
        if base is not None:
            if not isinstance(base, FrontPoint):
                raise ValueError(f"Front.base_point: expected FrontPoint or None, got {type(base).__name__}")
            if len(base.values) != k:
                raise ValueError(f"Front.base_point.values: has {len(base.values)} entries, expected {k}")
            if not base.is_base:
                raise ValueError(f"Front.base_point.weights: the base model has no preference, expected [] "
                                 f"but got {list(base.weights)}")
        _check_dict(self.metrics, "Front.metrics")
        _check_dict(self.meta, "Front.meta")
        object.__setattr__(self, "objectives", objectives)
        object.__setattr__(self, "reference_point", ref)
        object.__setattr__(self, "points", points)

    # ------------------------------------------------------------------ arrays
    @property
    def k(self) -> int:
        return len(self.objectives)

    def __len__(self) -> int:
        return len(self.points)

    def values(self) -> np.ndarray:
        """``(N, K)`` array of objective means."""
        return np.array([p.values for p in self.points], dtype=float).reshape(len(self.points), self.k)

    def weights(self) -> np.ndarray:
        """``(N, K)`` array of preference vectors."""
        return np.array([p.weights for p in self.points], dtype=float).reshape(len(self.points), self.k)

    def stderr(self) -> np.ndarray:
        """``(N, K)`` array of standard errors."""
        return np.array([p.stderr for p in self.points], dtype=float).reshape(len(self.points), self.k)

    def nondominated_mask(self) -> np.ndarray:
        return non_dominated_mask(self.values())

    def gain_over_base(self) -> np.ndarray:
        """``(N, K)``: how far each point moved from the base model, per objective, in standard errors.

        ``(value - base) / se(value - base)`` (:func:`~pareto.front.metrics.difference_stderr`: paired over the
        prompts when both points kept their per-prompt scores); where that standard error is 0 the gain is 0 for
        an equal value and +/-inf otherwise. Raises ``ValueError`` when the front has no ``base_point``.
        """
        if self.base_point is None:
            raise ValueError("Front.base_point: this front has none, so there is no gain over the base model")
        base = self.base_point
        diff = self.values() - np.asarray(base.values, dtype=float)
        scale = np.array([difference_stderr(p.stderr, base.stderr, p.per_prompt_scores(), base.per_prompt_scores())
                          for p in self.points], dtype=float).reshape(diff.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), np.sign(diff) * np.inf)
        return np.where((scale == 0) & (diff == 0), 0.0, gain)

    def vertex_separation(self) -> np.ndarray:
        """[K]: how far each objective's own vertex beats the other vertices, in (paired) standard errors."""
        return vertex_separation(self.weights(), self.values(), self.stderr(),
                                 [p.per_prompt_scores() for p in self.points])

    def nondominated(self) -> Front:
        """A new ``Front`` holding only the non-dominated points (order kept, metrics cleared)."""
        mask = self.nondominated_mask()
        pts = tuple(p for p, keep in zip(self.points, mask, strict=True) if keep)
        return replace(self, points=pts, metrics={}, meta=dict(self.meta))

    # ----------------------------------------------------------------- metrics
    def compute_metrics(self, oracle_front: Any = None) -> dict[str, float]:
        """Compute :func:`~pareto.front.metrics.front_metrics`, store into ``self.metrics`` and return them.

        ``oracle_front`` is an ``(M, K)`` array of oracle values, or a ``Front`` (its values are used).
        """
        if isinstance(oracle_front, Front):
            oracle_front = oracle_front.values()
        m = front_metrics(self.weights(), self.values(), self.reference_point, oracle_front=oracle_front)
        if self.points:
            for name, sep in zip(self.objectives, self.vertex_separation(), strict=True):
                if np.isfinite(sep):
                    m[f"vertex_separation/{name}"] = float(sep)
        self.metrics.clear()
        self.metrics.update(m)
        return m

    def hypervolume(self) -> float:
        return hypervolume(self.values(), self.reference_point)

    def query(
        self,
        weights: Any,
        scalarize: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> FrontPoint:
        """The non-dominated point that best serves preference ``weights``.

        ``scalarize(values (N, K), weights (K,)) -> scores (N,)`` (higher is better); the default is the
        linear scalarization ``values @ weights``. Ties go to the earliest point.
        """
        if not self.points:
            raise ValueError("Front.query: the front is empty")
        from .grid import validate_weights

        w = validate_weights(weights, self.k)
        mask = self.nondominated_mask()
        idx = np.flatnonzero(mask)
        vals = self.values()[idx]
        scores = vals @ w if scalarize is None else np.asarray(scalarize(vals, w), dtype=float)
        return self.points[int(idx[int(np.argmax(scores))])]

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "method": self.method,
            "objectives": list(self.objectives),
            "points": [p.to_dict() for p in self.points],
            "reference_point": list(self.reference_point),
            "scorer": self.scorer,
            "metrics": dict(self.metrics),
            "meta": dict(self.meta),
            # Only when present: a front without one writes the same JSON as before the field existed.
            **({"base_point": self.base_point.to_dict()} if self.base_point is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Front:
        """Build a ``Front`` from :meth:`to_dict` output; raises ``ValueError`` naming the bad field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"Front: expected a dict, got {type(d).__name__}")
        for key in d:
            if key != "schema" and key not in _FRONT_FIELDS:
                raise ValueError(f"Front: unknown field {key!r}")
        if "schema" in d and d["schema"] != SCHEMA:
            raise ValueError(f"Front.schema: unsupported {d['schema']!r}, expected {SCHEMA!r}")
        for key in ("method", "objectives", "points", "reference_point"):
            if key not in d:
                raise ValueError(f"Front: missing field {key!r}")
        raw_points = d["points"]
        if isinstance(raw_points, (str, bytes, Mapping)) or not isinstance(raw_points, (list, tuple)):
            raise ValueError(f"Front.points: expected a list, got {type(raw_points).__name__}")
        points = tuple(FrontPoint.from_dict(p, where=f"Front.points[{i}]") for i, p in enumerate(raw_points))
        base = d.get("base_point")
        if base is not None:
            if isinstance(base, Mapping) and "weights" not in base:
                base = {**base, "weights": []}  # the base model has no preference; writers may leave it out
            base = FrontPoint.from_dict(base, where="Front.base_point")
        return cls(
            method=d["method"],
            objectives=d["objectives"],
            points=points,
            reference_point=d["reference_point"],
            scorer=d.get("scorer", "oracle"),
            metrics=dict(_check_dict(d.get("metrics", {}), "Front.metrics")),
            meta=dict(_check_dict(d.get("meta", {}), "Front.meta")),
            base_point=base,
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, s: str) -> Front:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as exc:
            raise ValueError(f"Front: invalid JSON ({exc})") from None
        return cls.from_dict(d)

    def save(self, path: Any) -> None:
        """Write :meth:`to_json` to ``path`` atomically (a kill mid-save leaves the previous file)."""
        from pareto.io import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: Any) -> Front:
        from pathlib import Path

        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    # ------------------------------------------------------------------- table
    def table(self, precision: int = 3) -> str:
        """A fixed-width text table: one row per point, '*' marks non-dominated points, then the metrics.

        With a ``base_point``, the base model comes first (row ``base``) and a last column gives each point's
        gain over it per objective in standard errors (:meth:`gain_over_base`).
        """
        mask = self.nondominated_mask() if self.points else np.zeros(0, dtype=bool)
        has_base = self.base_point is not None
        header = ["#", "lambda"] + list(self.objectives) + (["vs base (SE)"] if has_base else []) + ["nd"]

        def value_cells(p: FrontPoint) -> list[str]:
            return [f"{v:.{precision}f} ± {s:.{precision}f}" for v, s in zip(p.values, p.stderr, strict=True)]

        rows = []
        if has_base:
            rows.append(["base", "-", *value_cells(self.base_point), "", ""])
            gains = self.gain_over_base()
        for i, (p, nd) in enumerate(zip(self.points, mask, strict=True)):
            lam = "(" + ", ".join(f"{x:.2f}" for x in p.weights) + ")"
            gain = ["(" + ", ".join(f"{g:+.1f}" for g in gains[i]) + ")"] if has_base else []
            rows.append([str(i), lam, *value_cells(p), *gain, "*" if nd else ""])
        widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(header)]

        def fmt(cells: list[str]) -> str:
            out = [cells[0].rjust(widths[0]), cells[1].ljust(widths[1])]
            out += [c.rjust(w) for c, w in zip(cells[2:-1], widths[2:-1], strict=True)]
            out.append(cells[-1].ljust(widths[-1]))
            return "  ".join(out).rstrip()

        lines = [f"front: method={self.method} scorer={self.scorer} points={len(self.points)}"]
        lines.append(fmt(header))
        lines.append("  ".join("-" * w for w in widths))
        lines += [fmt(r) for r in rows]
        hv = self.metrics.get("hypervolume", self.hypervolume())
        ref = "(" + ", ".join(f"{x:g}" for x in self.reference_point) + ")"
        summary = (
            f"hypervolume={hv:.{precision + 1}g} (ref={ref})  non-dominated={int(mask.sum())}/{len(mask)}"
        )
        if "igd" in self.metrics:
            summary += f"  IGD={self.metrics['igd']:.{precision + 1}g}"
        if "inner_product" in self.metrics:
            summary += f"  inner_product={self.metrics['inner_product']:.{precision + 1}g}"
        lines.append(summary)
        return "\n".join(lines)
