"""The experiment schema: one YAML file describes a whole pareto run.

Loaded with `yaml.safe_load` and validated by pydantic before any compute starts. Every problem becomes a
one-line `ConfigError` that names the field and says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

# Tasks the embedded registry knows, with the objectives they define (kept here so validation needs no compute).
KNOWN_TASKS: dict[str, tuple[str, ...]] = {"tiny-hh": ("helpful", "harmless", "concise")}
DPO_METHODS = ("panacea", "per_weight_dpo", "mah_dpo", "soups", "modpo")
LABELLED_METHODS = ("panacea", "per_weight_dpo", "mah_dpo", "soups")  # methods that train on per-objective labels
Z_REFERENCE = -3.0  # hypervolume reference of z-scored reward-model fronts (pareto.front.metrics re-exports it)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A config problem, phrased as one line: where it is and how to fix it."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---- real-scale sections: a dataset next to tiny-hh, reward models from HF ids, the cluster a recipe plans for ----
DATASET_FORMATS = ("pku_saferlhf", "hh_rlhf", "helpsteer2", "ultrafeedback", "jsonl")
DATASET_SPLITS = ("train", "val", "eval")
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
_SPLIT_EXPR = r"^[^\[\]\s]+(\[-?\d*%?:-?\d*%?\])?$"  # name or name[a:b] / name[a%:b%] (the `datasets` syntax)


class DatasetConfig(Strict):
    """A real preference dataset: where it is, how its splits are named, which field labels which objective."""

    format: Literal["pku_saferlhf", "hh_rlhf", "helpsteer2", "ultrafeedback", "jsonl"]
    hub_id: str | None = Field(None, description="Hugging Face dataset id, loaded through `datasets`")
    path: str | None = Field(None, description="local directory (one file per split) or a single file")
    subset: str | None = Field(None, description="hub config name (e.g. PKU-SafeRLHF 'alpaca-7b')")
    revision: str | None = Field(None, description="hub revision to pin")
    splits: dict[str, str] = Field(default_factory=lambda: {"train": "train", "eval": "test"},
                                   description="our split (train/val/eval) -> source split, e.g. 'train[95%:]'")
    labels: dict[str, str | list[str]] = Field(
        ..., description="objective -> label source: a column (pku_saferlhf, jsonl), subset(s) (hh_rlhf), "
                         "an attribute with optional '-' for lower-is-better (helpsteer2), an aspect (ultrafeedback)")
    max_rows: int | None = Field(None, ge=1, description="read at most this many rows per split (quick runs)")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="helpsteer2/ultrafeedback: cap pairs per prompt")
    bad_rows: Literal["error", "skip"] = Field("error", description="a malformed row stops loading, or is counted")

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if (self.hub_id is None) == (self.path is None):
            raise ValueError("give exactly one of hub_id (a Hugging Face dataset id) or path (local files)")
        unknown = sorted(set(self.splits) - set(DATASET_SPLITS))
        if unknown or "train" not in self.splits:
            raise ValueError(f"splits must map some of {list(DATASET_SPLITS)} (train required) to source splits; "
                             f"got {sorted(self.splits)}")
        for ours, expr in self.splits.items():
            if not re.match(_SPLIT_EXPR, expr):
                raise ValueError(f"splits.{ours}: {expr!r} is not a split expression like 'train' or 'train[:95%]'")
        if not self.labels:
            raise ValueError("labels is empty; map at least one objective to its label source")
        for objective, source in self.labels.items():
            values = source if isinstance(source, list) else [source]
            if not values or not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"labels.{objective}: give a non-empty name")
            if self.format != "hh_rlhf" and isinstance(source, list):
                raise ValueError(f"labels.{objective}: one source per objective for format {self.format!r}")
            if self.format == "helpsteer2" and values[0].lstrip("-") not in HELPSTEER2_ATTRIBUTES:
                raise ValueError(f"labels.{objective}: {values[0]!r} is not a HelpSteer2 attribute; use one of "
                                 f"{list(HELPSTEER2_ATTRIBUTES)} (prefix '-' when lower is better)")
            if self.format == "ultrafeedback" and values[0] not in ULTRAFEEDBACK_ASPECTS:
                raise ValueError(f"labels.{objective}: {values[0]!r} is not an UltraFeedback aspect; use one of "
                                 f"{list(ULTRAFEEDBACK_ASPECTS)}")
        return self

    @property
    def source(self) -> str:
        return self.hub_id or str(self.path)


class HFRewardModelConfig(Strict):
    """A Hugging Face sequence-classification reward model scoring one or more objectives."""

    model: str = Field(..., description="Hugging Face id or local path of an AutoModelForSequenceClassification")
    objectives: list[str] = Field(..., min_length=1, description="objectives this model scores, one per output")
    outputs: list[int | str] | None = Field(None, description="logit index or id2label name per objective; "
                                                              "default 0..n-1")
    template: str = Field("chat", description="'chat' (tokenizer chat template), 'pair' (tokenizer(prompt, "
                                              "response)), 'hh' (HH-RLHF transcript as a pair), or a format "
                                              "string with {prompt} and {response}")
    score: Literal["logit", "probability"] = Field("logit", description="probability = softmax over the labels")
    output_field: str = Field("logits", description="model output attribute holding the scores")
    max_length: int = Field(1024, ge=8)
    batch_size: int = Field(8, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    revision: str | None = None
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _check(self) -> HFRewardModelConfig:
        if self.outputs is not None and len(self.outputs) != len(self.objectives):
            raise ValueError(f"outputs has {len(self.outputs)} entries but objectives has {len(self.objectives)}; "
                             "give one output per objective")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError("objectives must be unique")
        if self.template not in ("chat", "pair", "hh") and not (
                "{prompt}" in self.template and "{response}" in self.template):
            raise ValueError(f"template {self.template!r}: use 'chat', 'pair', 'hh' or a format string with "
                             "{prompt} and {response}")
        return self


class ClusterConfig(Strict):
    """The GPU cluster a real-scale recipe is planned for (read by `pareto validate`, never needed locally)."""

    gpu: str = Field("A100-80GB", description="accelerator label (documentation and the plan)")
    gpu_memory_gib: float = Field(80.0, gt=0)
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(8, ge=1)
    cpus_per_node: int = Field(32, ge=1)
    seq_len: int = Field(1024, ge=16, description="tokens per sequence (prompt + response) for memory estimates; "
                                                 "model.max_prompt_tokens + max_response_tokens when both are set")


class TaskConfig(Strict):
    name: str = Field("tiny-hh", description="embedded task name (real datasets: see the recipes)")
    pairs_per_prompt: int = Field(4, ge=1)
    label_noise: float = Field(0.1, ge=0.0, lt=0.5)
    dataset: DatasetConfig | None = Field(None, description="a real dataset; then `name` is free-form")

    @model_validator(mode="after")
    def _known(self) -> TaskConfig:
        # An embedded task is looked up by name; a real dataset brings its own objectives (its label mapping).
        if self.dataset is None and self.name not in KNOWN_TASKS:
            raise _FieldError("task.name", f"unknown task {self.name!r}; use one of {sorted(KNOWN_TASKS)} "
                                           "or describe a real dataset under task.dataset")
        return self

    def available_objectives(self, reward_objectives: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Objectives this task can supply: the embedded task's, or the dataset's labels plus reward-model outputs."""
        if self.dataset is None:
            return KNOWN_TASKS[self.name]
        return tuple(dict.fromkeys([*self.dataset.labels, *reward_objectives]))


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
    base: str = Field("tiny", description="'tiny' (built and SFT-trained here), a Hugging Face id, a local "
                                          "folder, or a GGUF file (a path, or package:<pip package>/<file>.gguf) "
                                          "dequantized once and cached as safetensors")
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sft: Literal["auto", "always", "never"] = Field(
        "auto", description="SFT the base on the task's responses first (a dataset: its chosen replies); "
                            "auto = only the embedded tiny model")
    max_prompt_tokens: int | None = Field(None, ge=8, description="real data: longer prompts lose leading turns "
                                                                  "(or are dropped); default: context - response")
    max_response_tokens: int | None = Field(None, ge=4, description="real data: responses are cut where prompt + "
                                                                    "response exceed the two budgets; default: "
                                                                    "min(512, context / 4)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="training/generation autocast: auto = bf16 on a GPU that supports it, else fp32")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    trust_remote_code: bool = Field(False, description="allow a hub model's own Python code (off: safer)")

    @property
    def needs_sft(self) -> bool:
        return self.sft == "always" or (self.sft == "auto" and self.base == "tiny")


class RewardModelConfig(Strict):
    encoder: str = Field("sentence-transformers/all-MiniLM-L6-v2",
                         description="sentence encoder; the MiniLM one is loaded offline from its PyPI package")
    hidden_size: int = Field(256, ge=8)
    encoder_max_length: int = Field(128, ge=16, le=512, description="tokens of 'last user turn + reply' the "
                                                                     "encoder reads")
    epochs: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    length_feature: bool = Field(True, description="give the heads the response length too (conciseness)")
    min_accuracy: float = Field(0.85, ge=0, le=1, description="held-out pairwise accuracy required per objective "
                                                              "(human labels are noisy: ~0.55-0.65 on real data)")
    normalize_on: Literal["auto", "pairs", "base_answers"] = Field(
        "auto", description="z-score statistics fit on the training pairs' responses, or on the base model's "
                            "answers to validation prompts; auto = pairs for the embedded task, base_answers for "
                            "a dataset")
    max_pairs: int | None = Field(None, ge=2, description="train the heads on a seeded subset of this many "
                                                          "training pairs; null = all")
    hf: list[HFRewardModelConfig] = Field(default_factory=list,
                                          description="Hugging Face reward models (ids or paths) scoring objectives")
    rules: dict[str, Literal["length"]] = Field(default_factory=dict,
                                                description="objective -> rule-based score (length: shorter is "
                                                            "better) instead of a learned head")
    tie_weight: float = Field(0.0, ge=0, description="weight of a tie term in the Bradley–Terry loss: pairs tied on "
                                                     "an objective (label -1) are fit to equal scores; only where -1 "
                                                     "is a real tie (tiny-hh: harmless on safe prompts), not a "
                                                     "missing label")

    @model_serializer(mode="wrap")
    def _without_default_tie(self, handler: Any) -> dict:
        # left out at its default, so the cache keys (digests) of configs that do not use it stay as they were
        data = handler(self)
        if self.tie_weight == 0.0:
            data.pop("tie_weight", None)
        return data


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
    lora_layers: int | None = Field(None, ge=1, description="adapt only the top N decoder layers (backward stops "
                                                            "below them: much cheaper on a real model); null = all")
    max_pairs: int | None = Field(None, ge=1, description="train on a seeded subset of this many training pairs "
                                                          "(their reference log-probs are computed once); "
                                                          "null = all")
    eval_every: int = Field(50, ge=1, description="steps between held-out front checks (early stopping)")
    patience: int = Field(3, ge=1, description="checks without improvement before stopping")
    val_prompts: int = Field(24, ge=2)
    max_repetition: float = Field(0.1, ge=0, le=1, description="reject checkpoints whose samples repeat more")
    keep: Literal["best", "last"] = Field("best", description="the checkpoint a run returns: the best by the held-out "
                                                              "front metric, or the last (when a few noisy "
                                                              "validation prompts cannot tell checkpoints apart)")
    checkpoint_every: int = Field(50, ge=1, description="steps between trainer checkpoints (state_dir/checkpoints; "
                                                        "a rerun of the same config resumes from the newest)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept per trainer (older ones are removed)")


class PanaceaConfig(DPOConfig):
    aggregation: Literal["linear", "tchebycheff"] = "linear"
    vertex_prob: float = Field(0.3, ge=0, le=1, description="chance a sampled λ is a simplex vertex")


class PerWeightConfig(DPOConfig):
    per_weight: ClassVar[bool] = True
    lr: float = Field(2e-4, gt=0)
    weights: list[list[float]] | None = Field(None, description="λ grid to train; default: the evaluation grid")


# ---- conditioned-policy methods of issue 3: RiC, MAH-DPO, Rewarded Soups, and the MODPO per-weight baseline -------
SFT_METHODS = ("ric",)  # conditioned by supervised fine-tuning (no preference loss)


class RiCConfig(Strict):
    """Rewards-in-Context: SFT with z-scored rewards written into the prompt, then rejection-sampling rounds."""

    per_weight: ClassVar[bool] = False

    lr: float = Field(3e-3, gt=0, description="offline SFT learning rate")
    epochs: int = Field(10, ge=1, description="offline SFT epochs")
    batch_size: int = Field(32, ge=1)
    lora_rank: int | None = Field(None, ge=1, description="LoRA rank; null = full fine-tuning (the tiny LM must "
                                                          "learn to read numbers, which a LoRA did not; use LoRA "
                                                          "for large models)")
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
    val_prompts: int = Field(24, ge=2)
    max_repetition: float = Field(0.1, ge=0, le=1, description="reject checkpoints whose samples repeat more")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (one after the offline pass and after each "
                                                       "online round; a rerun resumes after the last finished one)")


class MAHDPOConfig(DPOConfig):
    """Multi-action-head DPO: a shared LoRA backbone (target_modules) and one LoRA delta per objective on lm_head."""

    head_rank: int = Field(8, ge=1, description="rank of each objective's delta on the shared LM head")
    head_alpha: float = Field(16.0, gt=0)


class SoupsConfig(DPOConfig):
    """Rewarded Soups: one LoRA-DPO adapter per objective, merged by λ at inference."""

    merge: Literal["delta", "params"] = Field("delta", description="delta: Σλ_i B_i A_i (exact); params: "
                                                                   "(Σλ_i B_i)(Σλ_i A_i) as the reference code")


class MODPOConfig(DPOConfig):
    """MODPO: DPO on one objective's labels with a margin from the other objectives' rewards; one model per λ."""

    per_weight: ClassVar[bool] = True
    lr: float = Field(2e-4, gt=0)
    weights: list[list[float]] | None = Field(None, description="λ grid to train; default: the evaluation grid")
    scalarizer: Literal["linear", "log_sigmoid"] = Field("linear", description="how the other objectives' "
                                                                               "rewards form the margin")
    preference_objective: str | None = Field(None, description="objective whose labels DPO trains on; "
                                                               "default: the largest weight of each λ")
    margin_pairs: int | None = Field(600, ge=2, description="training pairs scored by the reward model for "
                                                            "margins; null = all")


# ---- PPO (RLHF on Ray actors): MORLHF (one policy per λ) and Panacea-PPO (one SVD-LoRA policy for every λ) -------
PPO_METHODS = ("morlhf", "panacea_ppo")
# learned (the MiniLM reward-model head), hf (a reward_model.hf sequence-classifier), or a rule-based objective
REWARD_SOURCES = ("learned", "hf", "length", "oracle")


class PPOMethodConfig(Strict):
    """What every PPO-trained method shares. Units are explicit: prompts per step, samples per prompt."""

    per_weight: ClassVar[bool] = False

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
    critic: Literal["per_objective", "scalar"] = Field(
        "per_objective", description="one value head per objective (+ KL), or one on the scalarized reward")
    whiten_advantages: bool = True
    max_grad_norm: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(40, ge=1, description="response length cap during rollouts")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))

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
    per_weight: ClassVar[bool] = True
    weights: list[list[float]] | None = Field(None, description="λ grid to train; default: the evaluation grid")


class PanaceaPPOConfig(PPOMethodConfig):
    vertex_prob: float = Field(0.3, ge=0, le=1, description="chance a sampled λ is a simplex vertex")
    preferences_per_step: int = Field(1, ge=1, description="λ per rollout batch (each on a group of prompts)")


class ActorShare(Strict):
    """One actor role: how many, and what each asks of the cluster (fractions share a CPU or GPU)."""

    count: int = Field(1, ge=1)
    cpus: float = Field(0.5, ge=0)
    gpus: float = Field(0.0, ge=0)
    threads: int = Field(1, ge=1, description="torch threads inside each actor")


# vLLM's max_lora_rank must be one of these (pareto.models.svd_lora.VLLM_LORA_RANKS; repeated here: core imports
# no torch-heavy module).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _http_url(v: str | None) -> str | None:
    if v is not None and not v.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL such as http://127.0.0.1:8000")
    return v


def _vllm_rank(v: int) -> int:
    if v not in VLLM_LORA_RANKS:
        raise ValueError(f"vLLM allows only {list(VLLM_LORA_RANKS)}")
    return v


ServerURL = Annotated[str | None, AfterValidator(_http_url)]
VLLMRank = Annotated[int, AfterValidator(_vllm_rank)]


class PPOVLLMConfig(Strict):
    """The vLLM rollout engine (`ppo.engine: vllm`): a vLLM OpenAI-compatible server reached over HTTP, the policy
    synced to it as versioned LoRA adapters (`/v1/load_lora_adapter`)."""

    url: ServerURL = Field(None, description="an existing server serving the same base model (it must see "
                                              "adapter_dir); null = each rollout engine starts one from `venv`")
    venv: str | None = Field(None, description="the vLLM virtual environment (scripts/vllm_env.sh); default "
                                               "$PARETO_VLLM_VENV or ~/.cache/pareto/vllm-venv")
    adapter_dir: str | None = Field(None, description="where synced adapters are written; default: the temp dir")
    max_lora_rank: VLLMRank | None = Field(None, description="vLLM max_lora_rank; null = the policy's (padded) rank")
    max_loras: int = Field(8, ge=1, description="adapters in one engine batch (distinct λ per rollout batch)")
    max_model_len: int | None = Field(None, ge=16, description="null = the base model's context")
    extra_args: list[str] = Field(default_factory=list,
                                  description="more server arguments, e.g. [--gpu-memory-utilization, '0.3']")
    startup_timeout: float = Field(900.0, gt=0, description="seconds for a started server to become ready")
    request_timeout: float = Field(600.0, gt=0, description="seconds per HTTP request")


class PPOConfig(Strict):
    """Actors, resource shares, checkpoints and fault tolerance of PPO methods; the same keys scale to GPUs."""

    trainer: ActorShare = ActorShare(count=2, cpus=0.5, threads=1)
    rollout: ActorShare = ActorShare(count=2, cpus=0.25, threads=1)
    reward: ActorShare = ActorShare(count=1, cpus=0.25, threads=2)
    reference: ActorShare = ActorShare(count=1, cpus=0.25, threads=2)
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="rollout engine: transformers generate, or a vLLM server (see ppo.vllm)")
    vllm: PPOVLLMConfig = PPOVLLMConfig()
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend of trainers")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    reward_sources: dict[str, Literal["learned", "hf", "length", "oracle"]] = Field(
        default_factory=dict, description="objective -> the PPO training reward: learned (the MiniLM reward "
                                          "model's head), hf (the reward_model.hf entry scoring it), length (rule: "
                                          "shorter is better) or oracle (the synthetic task's rule); default: what "
                                          "scores it in the reward model (ExperimentConfig.reward_sources)")
    checkpoint_every: int = Field(10, ge=1, description="PPO steps between atomic checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    resume: Literal["auto", "never"] = Field("auto", description="auto: continue from the latest checkpoint")
    max_restarts: int = Field(2, ge=0, description="actor-failure recoveries per run before giving up")


class MethodsConfig(Strict):
    panacea: PanaceaConfig | None = None
    per_weight_dpo: PerWeightConfig | None = None
    morlhf: MORLHFConfig | None = None
    panacea_ppo: PanaceaPPOConfig | None = None
    ric: RiCConfig | None = None
    mah_dpo: MAHDPOConfig | None = None
    soups: SoupsConfig | None = None
    modpo: MODPOConfig | None = None

    def enabled(self) -> dict[str, DPOConfig]:
        return {name: cfg for name in DPO_METHODS + PPO_METHODS + SFT_METHODS
                if (cfg := getattr(self, name)) is not None}


class EvaluationConfig(Strict):
    grid_points: int = Field(6, ge=2, description="λ grid size (uniform for K=2, Das-Dennis for K>=3)")
    n_prompts: int | None = Field(None, ge=2, description="held-out prompts per λ; null = all")
    max_new_tokens: int = Field(48, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    reference_point: list[float] | Literal["base"] | None = Field(
        None, description="hypervolume reference, one value per objective; 'base' = the base model's point minus "
                          "reference_margin in every objective (reward-model fronts; logged)")
    reference_margin: float = Field(1.0, gt=0, description="with reference_point: base, how far below the base "
                                                           "point the reference sits (z-score units)")
    normalizer_prompts: int | None = Field(64, ge=2, description="validation prompts the base model answers to fit "
                                                                 "the reward normaliser (normalize_on: base_answers)")
    scorer: Literal["oracle", "reward_model"] = "oracle"


class TrackingConfig(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else SQLite")
    experiment: str | None = Field(None, description="MLflow experiment; default: the config name")
    registry: bool = Field(True, description="register the non-dominated models in the MLflow Model Registry")


class ResourcesConfig(Strict):
    ray_address: str | None = Field(None, description="Ray cluster address; null = $RAY_ADDRESS or a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (default: all)")
    cpus_per_task: float = Field(1.0, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)
    by_value_max_mb: float = Field(64.0, ge=0, description="models up to this size travel between Ray workers as "
                                                           "bytes; larger ones by path under the state folder, "
                                                           "which a cluster must put on shared storage")
    offline: bool | None = Field(None, description="workers never reach the Hugging Face hub; null = follow "
                                                   "HF_HUB_OFFLINE of the driver's environment")
    cluster: ClusterConfig | None = Field(None, description="the GPU cluster a real-scale recipe is planned for")

    @property
    def by_value_max_bytes(self) -> int:
        return int(self.by_value_max_mb * 2**20)


class ServingConfig(Strict):
    """How answers are generated when a front is served (`pareto query`, the UI): transformers+PEFT in process,
    or vLLM. vLLM serves LoRA methods (Panacea at λ, per-weight models, Rewarded Soups) as exported adapters;
    MAH-DPO head mixing and RiC prompt conditioning are not LoRA and always use transformers."""

    backend: Literal["hf", "vllm-server", "vllm-offline"] = Field(
        "hf", description="hf (transformers+PEFT, default), vllm-server (an OpenAI-compatible vLLM server), "
                          "vllm-offline (vLLM's engine in process: only where vllm is importable)")
    url: ServerURL = Field(None, description="vllm-server: its base URL, e.g. http://127.0.0.1:8000; null = start "
                                              "one on 127.0.0.1 from `venv` (it must see the adapter files)")
    venv: str | None = Field(None, description="the vLLM virtual environment (scripts/vllm_env.sh); default "
                                               "$PARETO_VLLM_VENV or ~/.cache/pareto/vllm-venv")
    max_lora_rank: VLLMRank = Field(64, description="vLLM max_lora_rank of a server or engine started here; an adapter "
                                               "of higher rank is refused")


# ---- sweeps: a multi-objective search (Optuna or pymoo) over λ and hyper-parameters of a per-weight method ------
SWEEP_SAMPLERS = ("nsga2", "tpe", "nsga3", "pymoo-nsga2", "pymoo-nsga3")


class SearchRange(Strict):
    """One hyper-parameter's range: `low`/`high` (optionally on a log scale), or a list of `choices`."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float | int | str] | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchRange:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty; list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class SweepConfig(Strict):
    """`pareto sweep`: trials choose λ and hyper-parameters of a per-weight method and report objective means.

    A conditioned method (one model for every λ) is not searched: its one model is evaluated on a λ grid.
    """

    method: str = Field("per_weight_dpo", description="the method to sweep (must be enabled under methods)")
    sampler: Literal["nsga2", "tpe", "nsga3", "pymoo-nsga2", "pymoo-nsga3"] = Field(
        "nsga2", description="Optuna NSGA-II (set explicitly: Optuna's default is TPE), TPE, NSGA-III, or pymoo's "
                             "NSGA-II/NSGA-III driven by ask-and-tell")
    n_trials: int = Field(16, ge=1, description="finished trials the study ends with (a resumed sweep counts "
                                                "the ones it already has)")
    concurrency: int = Field(2, ge=1, description="trials in flight at once, each a Ray task")
    population_size: int = Field(8, ge=2, description="generation size of NSGA-II/NSGA-III")
    storage: str | None = Field(None, description="Optuna storage URL (an RDB URL on a cluster); "
                                                  "default sqlite:///<state_dir>/optuna.db")
    study_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$",
                                   description="default: the config name; rerun with the same name to resume")
    seed_grid: bool = Field(True, description="the first trials are the evaluation λ grid (simplex vertices "
                                              "included), the rest come from the sampler")
    params: dict[str, SearchRange] = Field(default_factory=dict,
                                           description="method hyper-parameter -> range, e.g. beta, lr, lora_rank")
    grid_points: int | None = Field(None, ge=2, description="conditioned methods: λ grid size "
                                                            "(default evaluation.grid_points)")
    max_failed_trials: int = Field(3, ge=0, description="stop the sweep after this many failed trials")

    @property
    def uses_pymoo(self) -> bool:
        return self.sampler.startswith("pymoo-")


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
                raise _FieldError("objectives", f"{name!r} is not an objective of task {self.task.name!r}; "
                                  f"use some of {list(available)}")
        if len(set(self.objectives)) != k:
            raise _FieldError("objectives", "objective names must be unique")
        self._check_ppo()
        self._check_sweep()
        ref = self.evaluation.reference_point
        if ref == "base" and self.task.dataset is None:
            raise _FieldError("evaluation.reference_point", "'base' derives a reward-model reference for a real "
                                                            "dataset; the embedded task's oracle front needs numbers")
        if isinstance(ref, list):
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
        self._check_modpo()
        res = self.resources
        if res.num_cpus is not None and res.cpus_per_task > res.num_cpus:
            raise _FieldError("resources.cpus_per_task",
                              f"asks {res.cpus_per_task} CPUs per task but the local Ray has {res.num_cpus}; lower it")
        return self

    def _check_modpo(self) -> None:
        """MODPO: its λ grid is on the simplex and the objective it trains on has weight > 0 at every λ."""
        mo = self.methods.modpo
        if mo is None:
            return
        for i, w in enumerate(mo.weights or []):
            problem = simplex_problem(w, len(self.objectives))
            if problem:
                raise _FieldError(f"methods.modpo.weights.{i}", problem)
        if mo.preference_objective is None:
            return
        if mo.preference_objective not in self.objectives:
            raise _FieldError("methods.modpo.preference_objective",
                              f"{mo.preference_objective!r} is not in objectives {self.objectives}")
        from pareto.front.grid import preference_grid

        j = self.objectives.index(mo.preference_objective)
        grid = mo.weights or preference_grid(len(self.objectives), n_points=self.evaluation.grid_points).tolist()
        zero = [w for w in grid if w[j] <= 0]
        if zero:
            raise _FieldError("methods.modpo.preference_objective",
                              f"{mo.preference_objective!r} has weight 0 at λ={list(zero[0])} (MODPO divides by "
                              "it); leave it null to train each λ on its largest weight's objective")

    def _check_real_scale(self) -> None:
        """Real datasets and HF reward models: labels and reward outputs must match the objectives."""
        ds = self.task.dataset
        scored: dict[str, int] = {}
        for i, rm in enumerate(self.reward_model.hf):
            for name in rm.objectives:
                if name not in self.objectives:
                    raise _FieldError(f"reward_model.hf.{i}.objectives",
                                      f"{name!r} is not in objectives {self.objectives}; remove it or add it there")
                if name in scored:
                    raise _FieldError(f"reward_model.hf.{i}.objectives",
                                      f"{name!r} is already scored by reward_model.hf.{scored[name]}; score it once")
                scored[name] = i
        for name in self.reward_model.rules:
            if name not in self.objectives:
                raise _FieldError(f"reward_model.rules.{name}",
                                  f"{name!r} is not in objectives {self.objectives}; remove it or add it there")
            if name in scored:
                raise _FieldError(f"reward_model.rules.{name}",
                                  f"{name!r} is already scored by reward_model.hf.{scored[name]}; score it once")
        if ds is None:
            return
        for name in ds.labels:
            if name not in self.objectives:
                raise _FieldError(f"task.dataset.labels.{name}",
                                  f"{name!r} is not in objectives {self.objectives}; remove it or add it there")
        for name, source in self.reward_sources().items():
            if source == "learned" and name not in ds.labels:
                raise _FieldError("task.dataset.labels",
                                  f"objective {name!r} has no preference labels to train its reward head on; map it "
                                  "to a label source, score it with a reward_model.hf entry, or a reward_model.rules "
                                  "rule")
        for method in LABELLED_METHODS:
            if getattr(self.methods, method, None) is None:
                continue
            for name in self.objectives:
                if name not in ds.labels:
                    raise _FieldError("task.dataset.labels",
                                      f"objective {name!r} has no preference labels, which {method} trains on; "
                                      "map it to a label source")
        if self.evaluation.scorer == "oracle":
            raise _FieldError("evaluation.scorer", "a real dataset has no oracle; use reward_model")
        if self.evaluation.reference_point is None:
            raise _FieldError("evaluation.reference_point", "required with a real dataset (reward scales are not "
                                                            "[0, 1]); fix one value per objective in the config, "
                                                            "or 'base' to derive it from the base model's point")

    def _check_ppo(self) -> None:
        """PPO methods: batches split evenly over trainer ranks, reward sources and λ grids are valid."""
        ppo = self.ppo
        for name, source in ppo.reward_sources.items():
            if name not in self.objectives:
                raise _FieldError(f"ppo.reward_sources.{name}",
                                  f"{name!r} is not in objectives {self.objectives}; remove it or add it there")
            if source == "oracle" and self.task.dataset is not None:
                raise _FieldError(f"ppo.reward_sources.{name}",
                                  "a real dataset has no oracle; use learned, hf or length")
            if source == "hf" and not any(name in rm.objectives for rm in self.reward_model.hf):
                raise _FieldError(f"ppo.reward_sources.{name}",
                                  f"{name!r} has source hf but no reward_model.hf entry scores it; add it to one's "
                                  "objectives, or use learned/length")
        if ppo.backend == "nccl" and ppo.trainer.gpus <= 0:
            raise _FieldError("ppo.backend", "nccl needs GPU trainer ranks: set ppo.trainer.gpus > 0, or use gloo/auto")
        if ppo.trainer.cpus <= 0 and ppo.trainer.gpus <= 0:
            raise _FieldError("ppo.trainer.cpus", "a trainer rank needs some CPU or GPU share for its placement bundle")
        for name in PPO_METHODS:
            mcfg = getattr(self.methods, name)
            if mcfg is None:
                continue
            shards = ppo.trainer.count * mcfg.minibatches
            if mcfg.rows_per_step % shards:
                raise _FieldError(f"methods.{name}.prompts_per_step",
                                  f"prompts_per_step × samples_per_prompt = {mcfg.rows_per_step} rows must split "
                                  f"evenly into ppo.trainer.count × minibatches = {shards}; change one of them")
            if name == "panacea_ppo" and mcfg.prompts_per_step % mcfg.preferences_per_step:
                raise _FieldError("methods.panacea_ppo.preferences_per_step",
                                  f"must divide prompts_per_step ({mcfg.prompts_per_step}) so each λ gets a group")
            for i, w in enumerate(getattr(mcfg, "weights", None) or []):
                problem = simplex_problem(w, len(self.objectives))
                if problem:
                    raise _FieldError(f"methods.{name}.weights.{i}", problem)

    def _check_sweep(self) -> None:
        """The swept method is enabled and trainable per trial; every searched key is a numeric field of it."""
        sw = self.sweep
        if sw is None:
            return
        mcfg = getattr(self.methods, sw.method, None) if sw.method in type(self.methods).model_fields else None
        if mcfg is None:
            raise _FieldError("sweep.method", f"{sw.method!r} is not enabled; add a methods.{sw.method} section "
                                              f"or sweep one of {list(self.methods.enabled())}")
        if mcfg.per_weight and sw.method not in DPO_METHODS:
            raise _FieldError("sweep.method", f"sweep trials train DPO models; {sw.method!r} is not one of "
                                              f"{[m for m in DPO_METHODS if getattr(self.methods, m) is not None]}")
        fields = type(mcfg).model_fields
        for key, rng in sw.params.items():
            where = f"sweep.params.{key}"
            annotation = fields[key].annotation if key in fields else None
            if annotation not in (int, float):
                numeric = [n for n, f in fields.items() if f.annotation in (int, float)]
                raise _FieldError(where, f"not a numeric field of methods.{sw.method}; search some of {numeric}")
            if not mcfg.per_weight:
                raise _FieldError(where, f"{sw.method} is conditioned: a sweep evaluates its one model on a λ grid "
                                         "and searches no hyper-parameters; remove sweep.params")
            values = rng.choices if rng.choices is not None else [rng.low, rng.high]
            if any(isinstance(v, str) for v in values):
                raise _FieldError(where, "values must be numbers")
            if annotation is int and any(float(v) != int(v) for v in values):
                raise _FieldError(where, f"methods.{sw.method}.{key} is an integer; give integer values")

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


# Keys whose values are secrets (matched on the last dotted part, whole words: `max_new_tokens` is not one).
_SECRET_KEY = re.compile(r"(^|[_\-])(token|password|passwd|secret|api[_\-]?key|access[_\-]?key|auth|credentials?)"
                         r"($|[_\-])", re.IGNORECASE)
# Values that look like credentials whatever their key: `scheme://user:password@host`, common token prefixes.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+(?P<at>@)", re.IGNORECASE)
_TOKEN_VALUE = re.compile(r"^(hf_|sk-|ghp_|gho_|github_pat_|xox[bp]-|AKIA)[A-Za-z0-9_\-]{8,}$")
MASK = "***"


def mask_secrets(params: dict[str, Any]) -> dict[str, Any]:
    """Mask values of token/password/api-key-like keys, passwords in URLs and token-shaped strings."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is not None and _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            out[key] = MASK
        elif isinstance(value, str):
            out[key] = MASK if _TOKEN_VALUE.match(value) else _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<at>", value)
        else:
            out[key] = value
    return out


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
    if data is None:
        raise ConfigError(f"{path}: empty (no settings, only comments or blank lines); write at least a name and "
                          "the objectives, e.g. start from configs/quickstart.yaml ('{}' alone means all defaults)")
    return config_from_dict(data, overrides)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
