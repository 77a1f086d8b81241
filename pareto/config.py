"""The experiment schema: one YAML file describes a whole pareto run.

Loaded with `yaml.safe_load` and validated by pydantic before any compute starts. Every problem becomes a
one-line `ConfigError` that names the field and says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Tasks the embedded registry knows, with the objectives they define (kept here so validation needs no compute).
KNOWN_TASKS: dict[str, tuple[str, ...]] = {"tiny-hh": ("helpful", "harmless", "concise")}
DPO_METHODS = ("panacea", "per_weight_dpo")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A config problem, phrased as one line: where it is and how to fix it."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Strict):
    name: str = Field("tiny-hh", description="embedded task name (real datasets: see the recipes)")
    pairs_per_prompt: int = Field(4, ge=1)
    label_noise: float = Field(0.1, ge=0.0, lt=0.5)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in KNOWN_TASKS:
            raise ValueError(f"unknown task {v!r}; use one of {sorted(KNOWN_TASKS)}")
        return v


class TinyModelConfig(Strict):
    """The embedded tiny Llama-style LM (head_dim 64 so vLLM can serve it)."""

    hidden_size: int = Field(128, ge=64)
    intermediate_size: int = Field(256, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    num_kv_heads: int = Field(1, ge=1)
    vocab_size: int = Field(1024, ge=300)
    max_length: int = Field(128, ge=32)
    sft_epochs: int = Field(8, ge=1)
    sft_lr: float = Field(3e-3, gt=0)
    sft_batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class ModelConfig(Strict):
    base: str = Field("tiny", description="'tiny' (built and SFT-trained here), a Hugging Face id or a local path")
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sft: Literal["auto", "always", "never"] = Field(
        "auto", description="SFT the base on the task's responses first; auto = only the embedded tiny model")

    @property
    def needs_sft(self) -> bool:
        return self.sft == "always" or (self.sft == "auto" and self.base == "tiny")


class RewardModelConfig(Strict):
    encoder: str = Field("sentence-transformers/all-MiniLM-L6-v2",
                         description="sentence encoder; the MiniLM one is loaded offline from its PyPI package")
    hidden_size: int = Field(256, ge=8)
    epochs: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    length_feature: bool = Field(True, description="give the heads the response length too (conciseness)")
    min_accuracy: float = Field(0.85, ge=0, le=1, description="held-out pairwise accuracy required per objective")


class DPOConfig(Strict):
    """What every DPO-trained method shares."""

    per_weight: ClassVar[bool] = False  # True: one model per λ (the pipeline fans out one task per λ)

    beta: float = Field(0.5, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1, description="preference pairs per micro-batch")
    grad_accum: int = Field(1, ge=1)
    nll_weight: float = Field(0.1, ge=0, description="SFT term on the λ-preferred response (keeps text fluent)")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    eval_every: int = Field(50, ge=1, description="steps between held-out front checks (early stopping)")
    patience: int = Field(3, ge=1, description="checks without improvement before stopping")
    val_prompts: int = Field(24, ge=2)
    max_repetition: float = Field(0.1, ge=0, le=1, description="reject checkpoints whose samples repeat more")


class PanaceaConfig(DPOConfig):
    aggregation: Literal["linear", "tchebycheff"] = "linear"
    vertex_prob: float = Field(0.3, ge=0, le=1, description="chance a sampled λ is a simplex vertex")


class PerWeightConfig(DPOConfig):
    per_weight: ClassVar[bool] = True
    lr: float = Field(2e-4, gt=0)
    weights: list[list[float]] | None = Field(None, description="λ grid to train; default: the evaluation grid")


class MethodsConfig(Strict):
    panacea: PanaceaConfig | None = None
    per_weight_dpo: PerWeightConfig | None = None

    def enabled(self) -> dict[str, DPOConfig]:
        return {name: cfg for name in DPO_METHODS if (cfg := getattr(self, name)) is not None}


class EvaluationConfig(Strict):
    grid_points: int = Field(6, ge=2, description="λ grid size (uniform for K=2, Das-Dennis for K>=3)")
    n_prompts: int | None = Field(None, ge=2, description="held-out prompts per λ; null = all")
    max_new_tokens: int = Field(48, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    reference_point: list[float] | None = Field(None, description="hypervolume reference, one value per objective")
    scorer: Literal["oracle", "reward_model"] = "oracle"


class TrackingConfig(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else SQLite")
    experiment: str | None = Field(None, description="MLflow experiment; default: the config name")


class ResourcesConfig(Strict):
    ray_address: str | None = Field(None, description="Ray cluster address; null = $RAY_ADDRESS or a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    cpus_per_task: float = Field(1.0, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)


class ExperimentConfig(Strict):
    name: str = Field("experiment", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = Field(0, ge=0)
    task: TaskConfig = TaskConfig()
    objectives: list[str] = Field(default_factory=lambda: ["helpful", "harmless", "concise"], min_length=2)
    model: ModelConfig = ModelConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    methods: MethodsConfig = MethodsConfig(panacea=PanaceaConfig())
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    state_dir: str | None = Field(None, description="caches and local stores; default $PARETO_HOME or .pareto")

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        k = len(self.objectives)
        available = KNOWN_TASKS[self.task.name]
        for name in self.objectives:
            if name not in available:
                raise _FieldError("objectives", f"{name!r} is not an objective of task {self.task.name!r}; "
                                  f"use some of {list(available)}")
        if len(set(self.objectives)) != k:
            raise _FieldError("objectives", "objective names must be unique")
        ref = self.evaluation.reference_point
        if ref is not None:
            if len(ref) != k:
                raise _FieldError("evaluation.reference_point",
                                  f"has {len(ref)} values but there are {k} objectives; give one value per objective")
            if not all(math.isfinite(v) for v in ref):
                raise _FieldError("evaluation.reference_point", "values must be finite numbers")
        if not self.methods.enabled():
            raise _FieldError("methods", f"enable at least one method: {list(DPO_METHODS)}")
        pw = self.methods.per_weight_dpo
        if pw is not None and pw.weights is not None:
            for i, w in enumerate(pw.weights):
                problem = simplex_problem(w, k)
                if problem:
                    raise _FieldError(f"methods.per_weight_dpo.weights.{i}", problem)
        res = self.resources
        if res.num_cpus is not None and res.cpus_per_task > res.num_cpus:
            raise _FieldError("resources.cpus_per_task",
                              f"asks {res.cpus_per_task} CPUs per task but the local Ray has {res.num_cpus}; lower it")
        return self

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return len(self.objectives)

    @property
    def reference_point(self) -> list[float]:
        # Oracle objectives of the embedded task live in [0, 1]: the origin is a fixed, data-independent reference.
        return self.evaluation.reference_point or [0.0] * self.k

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def state_path(self) -> Path:
        return Path(self.state_dir or os.environ.get("PARETO_HOME") or ".pareto").resolve()

    def flat(self) -> dict[str, Any]:
        return flatten(self.model_dump(mode="json"))

    def digest(self, *sections: str) -> str:
        """A stable hash of some config sections (cache keys)."""
        dumped = self.model_dump(mode="json")
        payload = {s: _dig(dumped, s) for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _dig(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def simplex_problem(weights: Any, k: int) -> str | None:
    """Why `weights` is not a preference on the K-simplex, or None if it is."""
    try:
        values = [float(x) for x in weights]
    except (TypeError, ValueError):
        return "weights must be a list of numbers"
    if len(values) != k:
        return f"has {len(values)} weights but there are {k} objectives; give one weight per objective"
    if not all(math.isfinite(x) for x in values):
        return "weights must be finite (no NaN or inf)"
    if any(x < 0 for x in values):
        return "weights must be non-negative"
    if abs(sum(values) - 1.0) > 1e-6:
        return f"weights sum to {sum(values):.6g}, not 1; normalise them onto the simplex"
    return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _FieldError):
            loc, msg = ctx_err.field, str(ctx_err)
        elif e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or fix its spelling (see configs/quickstart.yaml for every section)"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        parts.append(f"{loc}: {msg}")
    return "invalid config: " + "; ".join(parts)


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """`a.b=1` strings into a nested dict; values are parsed as YAML scalars/lists (safe_load)."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set methods.panacea.lr=5e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc.__class__.__name__})") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is set twice")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: the top level must be a mapping of keys, got {type(data).__name__}")
    data = _merge(data, parse_overrides(overrides))
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment (safe_load only: no Python tags) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass a YAML file, e.g. configs/quickstart.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{path}{where}: not valid YAML for safe_load ({problem}); "
                          "plain mappings, lists and scalars only") from None
    return config_from_dict(data or {}, overrides)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
