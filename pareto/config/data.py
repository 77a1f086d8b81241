"""The data and model sections: the task (embedded or a real dataset), the base model, the reward model."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from pareto.config.base import KNOWN_TASKS, FieldError, Strict, TieWeighted

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



class TaskConfig(Strict):
    name: str = Field("tiny-hh", description="embedded task name (real datasets: see the recipes)")
    pairs_per_prompt: int = Field(4, ge=1)
    label_noise: float = Field(0.1, ge=0.0, lt=0.5)
    dataset: DatasetConfig | None = Field(None, description="a real dataset; then `name` is free-form")

    @model_validator(mode="after")
    def _known(self) -> TaskConfig:
        # An embedded task is looked up by name; a real dataset brings its own objectives (its label mapping).
        if self.dataset is None and self.name not in KNOWN_TASKS:
            raise FieldError("task.name", f"unknown task {self.name!r}; use one of {sorted(KNOWN_TASKS)} "
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
    long_responses: Literal["truncate", "drop"] = Field(
        "truncate", description="real data: a training pair whose prompt + longer reply exceeds the two budgets is "
                                "cut at the budget (truncate: that reply loses its end-of-turn token, as in TRL) or "
                                "dropped (drop: every trained reply keeps its end; counted as "
                                "train_pairs_dropped_long)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="training/generation autocast: auto = bf16 on a GPU that supports it, else fp32")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    trust_remote_code: bool = Field(False, description="allow a hub model's own Python code (off: safer)")

    @property
    def needs_sft(self) -> bool:
        return self.sft == "always" or (self.sft == "auto" and self.base == "tiny")


class RewardModelConfig(TieWeighted):
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

