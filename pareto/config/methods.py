"""The methods: each one's config section, and the method table that describes every method exactly once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, create_model, model_validator

from pareto.config.base import DEFAULT_TARGETS, Strict, TieWeighted


class MethodConfig(Strict):
    """What every method's section answers from the method table."""

    @property
    def per_weight(self) -> bool:
        """One model per λ (the pipeline fans out one task per λ), or one model for every λ."""
        return method_of(self).per_lambda


class LoRAMethodConfig(MethodConfig):
    """The LoRA adapter every DPO- and PPO-trained method puts on the base model."""

    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    lora_layers: int | None = Field(None, ge=1, description="adapt only the top N decoder layers (backward stops "
                                                            "below them: much cheaper on a real model); null = all")


class DPOConfig(LoRAMethodConfig, TieWeighted):
    """What every DPO-trained method shares."""

    DROPPED_AT_DEFAULT: ClassVar[dict[str, Any]] = TieWeighted.DROPPED_AT_DEFAULT | {
        "targets": "labels", "reward_temperature": 1.0, "tied_gaps": "reward_model"}

    targets: Literal["labels", "reward_model"] = Field(
        "labels", description="what DPO fits: labels = each objective's binary labels, aggregated by λ; reward_model "
                              "= the learned reward model's λ-scalarised score gap of each pair, as a soft label "
                              "(σ(λ·Δr/reward_temperature): reward distillation, which keeps the magnitudes a λ "
                              "trades; docs/fronts.md)")
    reward_temperature: float = Field(1.0, gt=0, description="with targets: reward_model, the z-scored reward gap "
                                                             "worth one nat of DPO logit")
    tied_gaps: Literal["reward_model", "zero"] = Field(
        "reward_model", description="with targets: reward_model, the gap of a pair on an objective its label calls a "
                                    "tie (-1): the reward model's, or zero. zero only where -1 is a real tie (tiny-hh: "
                                    "harmless on safe prompts), not a missing label")
    beta: float = Field(0.5, gt=0)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="cosine: linear warm-up over "
                                                                                "warmup_ratio of max_steps, then "
                                                                                "cosine decay to 0 at max_steps")
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1, description="preference pairs per micro-batch")
    grad_accum: int = Field(1, ge=1)
    nll_weight: float = Field(0.1, ge=0, description="SFT term on the λ-preferred response (keeps text fluent)")
    max_pairs: int | None = Field(None, ge=1, description="train on a seeded subset of this many training pairs "
                                                          "(their reference log-probs are computed once); "
                                                          "null = all")
    eval_every: int = Field(50, ge=1, description="steps between held-out front checks (early stopping)")
    eval_start: int = Field(0, ge=0, description="first step of the periodic held-out checks: none (and so no "
                                                 "early stop) before it; the untouched model is still checked")
    patience: int = Field(3, ge=1, description="checks without improvement before stopping")
    val_prompts: int = Field(24, ge=0, description="held-out prompts of each check; 0 (with keep: last): no checks")
    max_repetition: float = Field(0.1, ge=0, le=1, description="reject checkpoints whose samples repeat more")
    keep: Literal["best", "last"] = Field("best", description="the checkpoint a run returns: the best by the held-out "
                                                              "front metric, or the last (when a few noisy "
                                                              "validation prompts cannot tell checkpoints apart; "
                                                              "the untouched model is then not validated)")
    checkpoint_every: int = Field(50, ge=1, description="steps between trainer checkpoints (state_dir/checkpoints; "
                                                        "a rerun of the same config resumes from the newest)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept per trainer (older ones are removed)")

    @model_validator(mode="after")
    def _targets_alone(self) -> DPOConfig:
        if self.targets == "reward_model" and self.tie_weight > 0:
            raise ValueError("tie_weight: with targets: reward_model a tied pair is fitted to its score gap (zero with "
                             "tied_gaps: zero); set it to 0")
        if self.tied_gaps != "reward_model" and self.targets != "reward_model":
            raise ValueError("tied_gaps applies to targets: reward_model; set targets or drop tied_gaps")
        return self

    @model_validator(mode="after")
    def _checks_have_prompts(self) -> DPOConfig:
        if self.val_prompts == 1 or (self.val_prompts == 0 and self.keep == "best"):  # 0 means no checks
            raise ValueError(f"val_prompts: {self.val_prompts} gives the held-out checks too little to choose by; "
                             "use at least 2, or 0 with keep: last (no checks)")
        return self

    def learning_rate(self, step: int) -> float:
        """The step's learning rate (steps count from 1): constant, or warm-up then cosine decay to 0 at max_steps."""
        if self.lr_schedule == "constant":
            return self.lr
        warmup = max(1, round(self.warmup_ratio * self.max_steps))
        if step <= warmup:
            return self.lr * step / warmup
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, self.max_steps - warmup)))


class PanaceaConfig(DPOConfig):
    aggregation: Literal["linear", "tchebycheff", "smooth_tchebycheff"] = Field(
        "linear", description="how λ combines the per-objective label losses (targets: labels)")
    smooth_mu: float = Field(0.1, gt=0, description="smooth_tchebycheff's temperature μ (→ tchebycheff as μ → 0)")
    vertex_prob: float = Field(0.3, ge=0, le=1, description="chance a sampled λ is a simplex vertex")
    batch_by_lambda: bool = Field(False, description="draw each micro-batch for its λ: a pair slot goes to objective "
                                                     "j with probability λ_j (datasets where each pair labels one "
                                                     "objective: a vertex then trains on its own labels only)")

    @model_validator(mode="after")
    def _one_aggregate(self) -> PanaceaConfig:
        if self.targets == "reward_model" and self.aggregation != "linear":
            raise ValueError(f"aggregation: {self.aggregation} combines per-objective label losses; with targets: "
                             "reward_model λ scalarises the reward itself (one loss): drop aggregation")
        return self


class PerWeightConfig(DPOConfig):
    lr: float = Field(2e-4, gt=0)
    weights: list[list[float]] | None = Field(None, description="λ grid to train; default: the evaluation grid")
    batch_by_lambda: bool = Field(False, description="as Panacea's: a pair slot goes to objective j with probability "
                                                     "λ_j (a vertex model trains on its own objective's pairs only)")

# ---- conditioned-policy methods of issue 3: RiC, MAH-DPO, Rewarded Soups, and the MODPO per-weight baseline -------
class RiCConfig(MethodConfig):
    """Rewards-in-Context: SFT with z-scored rewards written into the prompt, then rejection-sampling rounds."""

    lr: float = Field(3e-3, gt=0, description="offline SFT learning rate")
    epochs: int = Field(10, ge=1, description="offline SFT epochs")
    batch_size: int = Field(32, ge=1)
    lora_rank: int | None = Field(None, ge=1, description="LoRA rank; null = full fine-tuning. On the tiny LM a "
                                                          "rank-8 LoRA at lr 3e-3 never learned to read the reward "
                                                          "numbers; rank 32, alpha 64, lr 1e-2 does (docs/fronts.md)")
    lora_alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    offline_samples: int | None = Field(1500, ge=2, description="(prompt, response) samples of the training pairs "
                                                                "scored and trained on; null = all")
    online_rounds: int = Field(1, ge=0, description="multi-objective rejection sampling rounds after offline SFT")
    online_prompts: int = Field(256, ge=1, description="prompts generated per online round")
    online_epochs: int = Field(1, ge=1)
    online_lr: float = Field(5e-4, gt=0)
    origin_samples: int = Field(1000, ge=0, description="offline samples (quantile-filtered) mixed into each round")
    quantile: float = Field(0.7, gt=0, lt=1, description="keep a generation above this quantile on any objective")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of online generations")
    mapping: Literal["linf", "l2", "linear", "front", "auto"] = Field(
        "linf", description="λ -> desired rewards: a closed form over the observed reward range (linf: the paper's), "
                            "or front: the mean of the observed reward vectors best under λ; auto: the one whose "
                            "held-out front (reward model, validation prompts) keeps each objective highest at its "
                            "own vertex, with the largest hypervolume")
    tags: Literal["named", "values"] = Field("named", description="how the rewards are written into the prompt: "
                                                                 "'<helpful> +1.3 <harmless> -0.2' (the paper's) or "
                                                                 "'[+1.3 -0.2]' (the same numbers in the objectives' "
                                                                 "order; half the tokens on the tiny LM)")
    val_prompts: int = Field(24, ge=2)
    max_repetition: float = Field(0.1, ge=0, le=1, description="reject checkpoints whose samples repeat more")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (one after the offline pass and after each "
                                                       "online round; a rerun resumes after the last finished one)")


class FixedDPOConfig(DPOConfig):
    """Fixed-λ DPO: one LoRA-DPO model trained at one λ, the same answer for every λ (a baseline, and the worked
    example of docs/adding-a-method.md)."""

    lr: float = Field(2e-4, gt=0)
    weights: list[float] | None = Field(None, description="the one λ it trains at; default: equal weights")


HeadMix = Literal["mean", "max"]  # how MAH-DPO scales its heads by λ (pareto.models.multihead)


class MAHDPOConfig(DPOConfig):
    """Multi-action-head DPO: a shared LoRA backbone (target_modules) and one LoRA delta per objective on lm_head."""

    head_rank: int = Field(8, ge=1, description="rank of each objective's delta on the shared LM head")
    head_alpha: float = Field(16.0, gt=0)
    head_layers: int = Field(0, ge=0, description="each head also owns a delta on the target_modules of the top N "
                                                  "decoder layers (they leave the shared backbone); 0 = LM head only")
    head_mix: HeadMix = Field("mean", description="how λ scales the heads' deltas at inference: "
                                                               "mean = λ / Σλ (the paper's logit average); max = "
                                                               "λ / max λ (the leading objective's head whole; "
                                                               "measured in docs/fronts.md)")
    head_mix_power: float = Field(1.0, gt=0, le=1, description="with head_mix max: each head's delta scaled by "
                                                               "(λ_h / max λ)^p; p < 1 lifts the other objectives' "
                                                               "heads toward whole (1 with mean)")
    mix_prob: float = Field(0.0, ge=0, lt=1, description="share of batches trained at a drawn λ through the mixed "
                                                         "heads, on every objective's label (the per-weight loss at "
                                                         "that λ), so the heads learn to combine; 0 = the paper's "
                                                         "objective-tagged batches only (docs/fronts.md)")
    val_edges: bool = Field(False, description="the held-out checks also answer at every edge midpoint of the simplex "
                                               "(7 λ for 3 objectives instead of the vertices and the centre), so the "
                                               "checkpoint kept is chosen on mixtures of two objectives too")

    @model_validator(mode="after")
    def _power_with_max(self) -> MAHDPOConfig:
        if self.head_mix == "mean" and self.head_mix_power != 1:
            raise ValueError("head_mix_power applies to head_mix: max; set head_mix: max or drop head_mix_power")
        if self.tie_weight > 0:  # its objective-tagged batches mark the other objectives' labels -1: not ties
            raise ValueError("tie_weight: MAH-DPO's tagged batches hide the other objectives' labels as -1, which a "
                             "tie term would fit as ties; set it to 0")
        if self.targets != "labels":
            raise ValueError("targets: MAH-DPO trains each head on its own objective's labels; drop targets")
        return self


class SoupsConfig(DPOConfig):
    """Rewarded Soups: one LoRA-DPO adapter per objective, merged by λ at inference."""

    merge: Literal["delta", "params"] = Field("delta", description="delta: Σλ_i B_i A_i (exact); params: "
                                                                   "(Σλ_i B_i)(Σλ_i A_i) as the reference code")


class MODPOConfig(DPOConfig):
    """MODPO: DPO on one objective's labels with a margin from the other objectives' rewards; one model per λ."""

    lr: float = Field(2e-4, gt=0)
    weights: list[list[float]] | None = Field(None, description="λ grid to train; default: the evaluation grid")
    scalarizer: Literal["linear", "log_sigmoid"] = Field("linear", description="how the other objectives' "
                                                                               "rewards form the margin")
    preference_objective: str | None = Field(None, description="objective whose labels DPO trains on; "
                                                               "default: the largest weight of each λ")
    margin_pairs: int | None = Field(600, ge=2, description="training pairs scored by the reward model for "
                                                            "margins; null = all")

    @model_validator(mode="after")
    def _labels_only(self) -> MODPOConfig:
        if self.targets != "labels":
            raise ValueError("targets: MODPO fits one objective's labels with the others' rewards as a margin; "
                             "drop targets")
        return self


# ---- PPO (RLHF on Ray actors): MORLHF (one policy per λ) and Panacea-PPO (one SVD-LoRA policy for every λ) -------
# learned (the MiniLM reward-model head), hf (a reward_model.hf sequence-classifier), or a rule-based objective
REWARD_SOURCES = ("learned", "hf", "length", "oracle")


class PPOMethodConfig(LoRAMethodConfig):
    """What every PPO-trained method shares. Units are explicit: prompts per step, samples per prompt."""

    max_steps: int = Field(40, ge=1, description="PPO iterations (rollout, score, update, weight sync)")
    prompts_per_step: int = Field(16, ge=1)
    samples_per_prompt: int = Field(2, ge=1)
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    minibatches: int = Field(2, ge=1, description="optimizer steps per pass")
    lr: float = Field(1e-3, gt=0)
    critic_lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear learning-rate warm-up")
    clip_range: float = Field(0.2, gt=0)
    value_clip: float | None = Field(None, gt=0, description="value-loss clipping (e.g. 0.2); null = none")
    gamma: float = Field(1.0, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    kl_coef: float = Field(0.05, ge=0, description="β of the per-token KL penalty to the reference (SFT) policy")
    kl_target: float | None = Field(None, gt=0, description="adaptive KL: target KL per response; null = fixed β")
    kl_horizon: int = Field(10000, ge=1)
    scalarizer: Literal["linear", "tchebycheff", "log_sigmoid"] = "linear"
    ideal: float = Field(3.0, description="Tchebycheff ideal point, in whitened reward units")
    critic: Literal["per_objective", "scalar", "none"] = Field(
        "per_objective", description="one value head per objective (+ KL), or one on the scalarized reward; none = "
                                     "GRPO's group baseline (the GRPO methods)")
    whiten_advantages: bool = True
    max_grad_norm: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(40, ge=1, description="response length cap during rollouts")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature")

    @model_validator(mode="after")
    def _critic_needs_linear(self) -> PPOMethodConfig:
        if self.critic == "per_objective" and self.scalarizer != "linear":
            raise ValueError(f"critic 'per_objective' mixes per-objective advantages linearly; with scalarizer "
                             f"{self.scalarizer!r} set critic: scalar")
        return self

    @property
    def rows_per_step(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt


class MORLHFConfig(PPOMethodConfig):
    weights: list[list[float]] | None = Field(None, description="λ grid to train; default: the evaluation grid")


class PanaceaPPOConfig(PPOMethodConfig):
    vertex_prob: float = Field(0.3, ge=0, le=1, description="chance a sampled λ is a simplex vertex")
    preferences_per_step: int = Field(1, ge=1, description="λ per rollout batch (each on a group of prompts)")


class GRPOMethodConfig(PPOMethodConfig):
    """GRPO on the same actors: no critic; each prompt's `samples_per_prompt` answers are its group, and a sample's
    advantage is its λ-scalarized reward standardised within the group; KL to the reference is a loss term."""

    samples_per_prompt: int = Field(4, ge=2, description="the group: answers sampled per prompt (G)")
    critic: Literal["none"] = Field("none", description="GRPO has no critic: the group mean is the baseline")
    normalize: Literal["per_objective", "sum"] = Field(
        "per_objective", description="per_objective (GDPO-style): standardise each objective within the group, then "
                                     "scalarise by λ; sum: scalarise the raw rewards, then standardise")
    whiten_advantages: bool = Field(False, description="group advantages are already standardised")
    kl_coef: float = Field(0.05, ge=0, description="β of the KL(π_θ ‖ π_ref) loss term (k3 estimator, per token)")


class MORLGRPOConfig(GRPOMethodConfig, MORLHFConfig):
    """GRPO at one fixed λ per policy (the grid: one policy per λ)."""


class PanaceaGRPOConfig(GRPOMethodConfig, PanaceaPPOConfig):
    """One SVD-LoRA policy for every λ: λ sampled per prompt group and written into the rollout engine."""


# ---- the method table: every method described once; every other list of methods is derived from it -------------
@dataclass(frozen=True)
class MethodSpec:
    """One method: its config section and what the rest of pareto needs to know to train, serve and export it."""

    name: str                 # its key under `methods:` in a config, and its name everywhere else
    config: type[MethodConfig]
    family: Literal["dpo", "sft", "ppo"]  # preference loss on pairs / supervised fine-tuning / PPO on Ray actors
    labelled: bool            # trains on per-objective preference labels (a dataset must label every objective)
    per_lambda: bool          # one model per λ (the pipeline fans out one task per λ); False: one model for every λ
    module: str               # pareto.methods.<module>: `fit(ctx, cfg, weights)` (PPO: the actors' policy hooks)
    policy: str | None        # the conditioned policy serving every λ, "module:Class" with `load(base, adapter, K)`
    export: Literal["adapter", "fold", "merge"] | None  # how a front point becomes one plain LoRA adapter (vLLM):
    #   adapter = each λ's model already is one; fold = the SVD-LoRA set to λ; merge = per-objective adapters by λ
    not_lora: str = ""        # export None: why vLLM cannot serve it (transformers does)
    title: str = ""           # one line for plans and tables


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("panacea", PanaceaConfig, "dpo", True, False, "pareto.methods.panacea",
               "pareto.models.conditioned:PanaceaPolicy", "fold",
               title="one SVD-LoRA model for every λ (DPO on per-objective labels or on reward-model gaps)"),
    MethodSpec("per_weight_dpo", PerWeightConfig, "dpo", True, True, "pareto.methods.per_weight", None, "adapter",
               title="one LoRA-DPO model per λ (baseline)"),
    MethodSpec("mah_dpo", MAHDPOConfig, "dpo", True, False, "pareto.methods.mah_dpo",
               "pareto.models.multihead:MultiHeadPolicy", None,
               not_lora="MAH-DPO mixes per-objective output heads by λ (the shared head plus each head's delta "
                        "scaled by λ), which is not a LoRA adapter, so it is served with transformers",
               title="one model, one head per objective (an LM-head delta; top layers too with head_layers), DPO"),
    MethodSpec("soups", SoupsConfig, "dpo", True, False, "pareto.methods.soups",
               "pareto.models.soups:SoupsPolicy", "merge",
               title="one LoRA-DPO adapter per objective, merged by λ"),
    MethodSpec("modpo", MODPOConfig, "dpo", False, True, "pareto.methods.modpo", None, "adapter",
               title="one MODPO model per λ"),
    MethodSpec("morlhf", MORLHFConfig, "ppo", False, True, "pareto.methods.morlhf", None, "adapter",
               title="one PPO policy per λ on the scalarized reward vector"),
    MethodSpec("panacea_ppo", PanaceaPPOConfig, "ppo", False, False, "pareto.methods.panacea_ppo",
               "pareto.models.conditioned:PanaceaPolicy", "fold",
               title="one SVD-LoRA PPO policy for every λ"),
    MethodSpec("morl_grpo", MORLGRPOConfig, "ppo", False, True, "pareto.methods.morl_grpo", None, "adapter",
               title="one GRPO policy per λ (vector reward, per-objective group normalisation)"),
    MethodSpec("panacea_grpo", PanaceaGRPOConfig, "ppo", False, False, "pareto.methods.panacea_grpo",
               "pareto.models.conditioned:PanaceaPolicy", "fold",
               title="one SVD-LoRA GRPO policy for every λ (λ sampled per prompt group)"),
    MethodSpec("fixed_dpo", FixedDPOConfig, "dpo", True, False, "pareto.methods.fixed_dpo",
               "pareto.methods.fixed_dpo:FixedPolicy", "adapter",
               title="one LoRA-DPO model at one fixed λ (a baseline that ignores λ)"),
    MethodSpec("ric", RiCConfig, "sft", False, False, "pareto.methods.ric",
               "pareto.models.rewards_in_context:RiCPolicy", None,
               not_lora="RiC conditions on desired rewards written into the prompt, not on LoRA weights, so it is "
                        "served with transformers",
               title="rewards-in-context SFT + rejection-sampling rounds"),
)}
DPO_METHODS = tuple(name for name, spec in METHODS.items() if spec.family == "dpo")
SFT_METHODS = tuple(name for name, spec in METHODS.items() if spec.family == "sft")
PPO_METHODS = tuple(name for name, spec in METHODS.items() if spec.family == "ppo")
LABELLED_METHODS = tuple(name for name, spec in METHODS.items() if spec.labelled)


def method_of(section: MethodConfig) -> MethodSpec:
    """The table row of a method's config section (the most derived class that the table names)."""
    for cls in type(section).__mro__:
        for spec in METHODS.values():
            if spec.config is cls:
                return spec
    raise KeyError(f"{type(section).__name__} is not in the method table (pareto.config.methods.METHODS)")


def spec_for(method: str, policy_kind: object = None) -> MethodSpec | None:
    """The table row of a logged front: by its method name, else by the policy kind it was logged with (a sweep's
    or an older run's front); None when neither is a method of this table."""
    return METHODS.get(method) or METHODS.get(str(policy_kind))


class _Methods(Strict):
    def enabled(self) -> dict[str, MethodConfig]:
        """The enabled methods' sections, in table order."""
        return {name: cfg for name in METHODS if (cfg := getattr(self, name)) is not None}


# The `methods:` section: one optional field per table row.
MethodsConfig = create_model("MethodsConfig", __base__=_Methods, __module__=__name__,
                             **{name: (spec.config | None, None) for name, spec in METHODS.items()})
