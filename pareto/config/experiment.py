"""The whole experiment: every section, and the checks that span sections."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from pareto.config.base import Z_REFERENCE, FieldError, Strict, simplex_problem
from pareto.config.data import ModelConfig, RewardModelConfig, TaskConfig
from pareto.config.masking import flatten, mask_secrets
from pareto.config.methods import (
    DPO_METHODS,
    LABELLED_METHODS,
    PPO_METHODS,
    MethodsConfig,
    PanaceaConfig,
    PanaceaPPOConfig,
)
from pareto.config.runtime import (
    EvaluationConfig,
    PPOConfig,
    ResourcesConfig,
    ServingConfig,
    SweepConfig,
    TrackingConfig,
)


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
    ppo: PPOConfig = PPOConfig()
    sweep: SweepConfig | None = Field(None, description="`pareto sweep`: search λ and hyper-parameters")
    serving: ServingConfig = Field(default_factory=ServingConfig,
                                   description="how answers are generated when the front is served (hf or vLLM)")
    state_dir: str | None = Field(None, description="caches and local stores; default $PARETO_HOME or .pareto")

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        k = len(self.objectives)
        available = self.task.available_objectives(tuple(o for m in self.reward_model.hf for o in m.objectives)
                                                   + tuple(self.reward_model.rules))
        self._check_real_scale()  # first: its messages say which label or reward model is missing
        for name in self.objectives:
            if name not in available:
                raise FieldError("objectives", f"{name!r} is not an objective of task {self.task.name!r}; "
                                  f"use some of {list(available)}")
        if len(set(self.objectives)) != k:
            raise FieldError("objectives", "objective names must be unique")
        self._check_ppo()
        self._check_sweep()
        ref = self.evaluation.reference_point
        if ref == "base" and self.task.dataset is None:
            raise FieldError("evaluation.reference_point", "'base' derives a reward-model reference for a real "
                                                            "dataset; the embedded task's oracle front needs numbers")
        if isinstance(ref, list):
            if len(ref) != k:
                raise FieldError("evaluation.reference_point",
                                  f"has {len(ref)} values but there are {k} objectives; give one value per objective")
            if not all(math.isfinite(v) for v in ref):
                raise FieldError("evaluation.reference_point", "values must be finite numbers")
        if not self.methods.enabled():
            raise FieldError("methods", f"enable at least one method: {list(DPO_METHODS)}")
        pw = self.methods.per_weight_dpo
        if pw is not None and pw.weights is not None:
            for i, w in enumerate(pw.weights):
                problem = simplex_problem(w, k)
                if problem:
                    raise FieldError(f"methods.per_weight_dpo.weights.{i}", problem)
        self._check_modpo()
        self._check_ties()
        res = self.resources
        if res.num_cpus is not None and res.cpus_per_task > res.num_cpus:
            raise FieldError("resources.cpus_per_task",
                              f"asks {res.cpus_per_task} CPUs per task but the local Ray has {res.num_cpus}; lower it")
        return self

    def _check_ties(self) -> None:
        """A tie term needs -1 to mean a tie: in a dataset it also means a missing label (HH-RLHF's helpful pairs
        carry no harmless label), which a tie term would read as 'rated the same'."""
        if self.task.dataset is None:
            return
        missing = "a dataset's -1 labels include missing labels, "
        embedded = " (it is for the embedded task, whose -1 is a real tie)"
        tie_term = missing + "which a tie term would fit as ties; set it to 0" + embedded
        zero_gaps = missing + "whose reward-model gap is what the targets need; drop tied_gaps" + embedded
        sections = {"reward_model": self.reward_model} | {f"methods.{n}": c for n, c in self.methods.enabled().items()}
        for section, cfg in sections.items():
            if getattr(cfg, "tie_weight", 0.0) > 0:
                raise FieldError(f"{section}.tie_weight", tie_term)
            if getattr(cfg, "tied_gaps", "reward_model") == "zero":
                raise FieldError(f"{section}.tied_gaps", zero_gaps)

    def _check_modpo(self) -> None:
        """MODPO: its λ grid is on the simplex and the objective it trains on has weight > 0 at every λ."""
        mo = self.methods.modpo
        if mo is None:
            return
        for i, w in enumerate(mo.weights or []):
            problem = simplex_problem(w, len(self.objectives))
            if problem:
                raise FieldError(f"methods.modpo.weights.{i}", problem)
        if mo.preference_objective is None:
            return
        if mo.preference_objective not in self.objectives:
            raise FieldError("methods.modpo.preference_objective",
                              f"{mo.preference_objective!r} is not in objectives {self.objectives}")
        from pareto.front.grid import preference_grid

        j = self.objectives.index(mo.preference_objective)
        grid = mo.weights or preference_grid(len(self.objectives), n_points=self.evaluation.grid_points).tolist()
        zero = [w for w in grid if w[j] <= 0]
        if zero:
            raise FieldError("methods.modpo.preference_objective",
                              f"{mo.preference_objective!r} has weight 0 at λ={list(zero[0])} (MODPO divides by "
                              "it); leave it null to train each λ on its largest weight's objective")

    def _check_real_scale(self) -> None:
        """Real datasets and HF reward models: labels and reward outputs must match the objectives."""
        ds = self.task.dataset
        scored: dict[str, int] = {}  # objective -> the reward_model.hf entry scoring it
        scorers = [(f"reward_model.hf.{i}.objectives", name, i) for i, rm in enumerate(self.reward_model.hf)
                   for name in rm.objectives] + [(f"reward_model.rules.{name}", name, None)
                                                 for name in self.reward_model.rules]
        for where, name, entry in scorers:
            if name not in self.objectives:
                raise FieldError(where, f"{name!r} is not in objectives {self.objectives}; remove it or add it there")
            if name in scored:
                raise FieldError(where, f"{name!r} is already scored by reward_model.hf.{scored[name]}; score it once")
            if entry is not None:
                scored[name] = entry
        if ds is None:
            return
        for name in ds.labels:
            if name not in self.objectives:
                raise FieldError(f"task.dataset.labels.{name}",
                                  f"{name!r} is not in objectives {self.objectives}; remove it or add it there")
        for name, source in self.reward_sources().items():
            if source == "learned" and name not in ds.labels:
                raise FieldError("task.dataset.labels",
                                  f"objective {name!r} has no preference labels to train its reward head on; map it "
                                  "to a label source, score it with a reward_model.hf entry, or a reward_model.rules "
                                  "rule")
        for method in LABELLED_METHODS:
            if getattr(self.methods, method, None) is None:
                continue
            for name in self.objectives:
                if name not in ds.labels:
                    raise FieldError("task.dataset.labels",
                                      f"objective {name!r} has no preference labels, which {method} trains on; "
                                      "map it to a label source")
        if self.evaluation.scorer == "oracle":
            raise FieldError("evaluation.scorer", "a real dataset has no oracle; use reward_model")
        if self.evaluation.reference_point is None:
            raise FieldError("evaluation.reference_point", "required with a real dataset (reward scales are not "
                                                            "[0, 1]); fix one value per objective in the config, "
                                                            "or 'base' to derive it from the base model's point")

    def _check_ppo(self) -> None:
        """PPO methods: batches split evenly over trainer ranks, reward sources and λ grids are valid."""
        ppo = self.ppo
        for name, source in ppo.reward_sources.items():
            if name not in self.objectives:
                raise FieldError(f"ppo.reward_sources.{name}",
                                  f"{name!r} is not in objectives {self.objectives}; remove it or add it there")
            if source == "oracle" and self.task.dataset is not None:
                raise FieldError(f"ppo.reward_sources.{name}",
                                  "a real dataset has no oracle; use learned, hf or length")
            if source == "hf" and not any(name in rm.objectives for rm in self.reward_model.hf):
                raise FieldError(f"ppo.reward_sources.{name}",
                                  f"{name!r} has source hf but no reward_model.hf entry scores it; add it to one's "
                                  "objectives, or use learned/length")
        if ppo.backend == "nccl" and ppo.trainer.gpus <= 0:
            raise FieldError("ppo.backend", "nccl needs GPU trainer ranks: set ppo.trainer.gpus > 0, or use gloo/auto")
        if ppo.trainer.cpus <= 0 and ppo.trainer.gpus <= 0:
            raise FieldError("ppo.trainer.cpus", "a trainer rank needs some CPU or GPU share for its placement bundle")
        for name in PPO_METHODS:
            mcfg = getattr(self.methods, name)
            if mcfg is None:
                continue
            shards = ppo.trainer.count * mcfg.minibatches
            if mcfg.rows_per_step % shards:
                raise FieldError(f"methods.{name}.prompts_per_step",
                                  f"prompts_per_step × samples_per_prompt = {mcfg.rows_per_step} rows must split "
                                  f"evenly into ppo.trainer.count × minibatches = {shards}; change one of them")
            if isinstance(mcfg, PanaceaPPOConfig) and mcfg.prompts_per_step % mcfg.preferences_per_step:
                raise FieldError(f"methods.{name}.preferences_per_step",
                                  f"must divide prompts_per_step ({mcfg.prompts_per_step}) so each λ gets a group")
            for i, w in enumerate(getattr(mcfg, "weights", None) or []):
                problem = simplex_problem(w, len(self.objectives))
                if problem:
                    raise FieldError(f"methods.{name}.weights.{i}", problem)

    def _check_sweep(self) -> None:
        """The swept method is enabled and trainable per trial; every searched key is a numeric field of it."""
        sw = self.sweep
        if sw is None:
            return
        mcfg = getattr(self.methods, sw.method, None) if sw.method in type(self.methods).model_fields else None
        if mcfg is None:
            raise FieldError("sweep.method", f"{sw.method!r} is not enabled; add a methods.{sw.method} section "
                                              f"or sweep one of {list(self.methods.enabled())}")
        if mcfg.per_weight and sw.method not in DPO_METHODS:
            raise FieldError("sweep.method", f"sweep trials train DPO models; {sw.method!r} is not one of "
                                              f"{[m for m in DPO_METHODS if getattr(self.methods, m) is not None]}")
        fields = type(mcfg).model_fields
        for key, rng in sw.params.items():
            where = f"sweep.params.{key}"
            annotation = fields[key].annotation if key in fields else None
            if annotation not in (int, float):
                numeric = [n for n, f in fields.items() if f.annotation in (int, float)]
                raise FieldError(where, f"not a numeric field of methods.{sw.method}; search some of {numeric}")
            if not mcfg.per_weight:
                raise FieldError(where, f"{sw.method} is conditioned: a sweep evaluates its one model on a λ grid "
                                         "and searches no hyper-parameters; remove sweep.params")
            values = rng.choices if rng.choices is not None else [rng.low, rng.high]
            if any(isinstance(v, str) for v in values):
                raise FieldError(where, "values must be numbers")
            if annotation is int and any(float(v) != int(v) for v in values):
                raise FieldError(where, f"methods.{sw.method}.{key} is an integer; give integer values")

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return len(self.objectives)

    @property
    def reference_point(self) -> list[float]:
        """The hypervolume reference of the task's main scorer (the oracle of the embedded task, whose objectives
        live in [0, 1]: the origin by default). 'base' is resolved once the base model is scored
        (`front_reference`); until then the fixed reward-model reference stands in (plans, validation)."""
        ref = self.evaluation.reference_point
        if ref == "base":
            return [Z_REFERENCE] * self.k
        return ref or [0.0] * self.k

    def front_reference(self, scorer: str, base_values: list[float] | None = None) -> list[float]:
        """The reference point of a front scored by `scorer` (oracle or reward_model). Reward-model fronts of the
        embedded task use the fixed z-score reference; a dataset's use the config's, or the base point minus
        evaluation.reference_margin when reference_point is 'base'."""
        ref = self.evaluation.reference_point
        if scorer == "oracle":
            return self.reference_point
        if self.task.dataset is None or ref is None:
            return [Z_REFERENCE] * self.k
        if ref == "base":
            if base_values is None:
                raise ValueError("reference_point 'base' needs the base model's point")
            return [float(v) - self.evaluation.reference_margin for v in base_values]
        return list(ref)

    def reward_sources(self) -> dict[str, str]:
        """objective -> what scores it in "the reward model" (fronts, RiC, MODPO, the UI): hf when a
        `reward_model.hf` entry scores it, a rule of `reward_model.rules`, else a learned head."""
        by_hf = {name for rm in self.reward_model.hf for name in rm.objectives}
        return {o: "hf" if o in by_hf else self.reward_model.rules.get(o, "learned") for o in self.objectives}

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def state_path(self) -> Path:
        return Path(self.state_dir or os.environ.get("PARETO_HOME") or ".pareto").resolve()

    def flat(self) -> dict[str, Any]:
        # What gets logged as MLflow params: secrets (token-like keys, credentials in URLs) are masked first.
        return mask_secrets(flatten(self.model_dump(mode="json")))

    def digest(self, *sections: str) -> str:
        """A stable hash of some config sections (cache keys)."""
        dumped = self.model_dump(mode="json")
        payload = {s: _dig(dumped, s) for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]



def _dig(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d

