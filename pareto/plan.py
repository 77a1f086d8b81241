"""Resolve what a config will do on a cluster, without downloading anything.

Kept whole: one computation read top to bottom (models -> memory -> datasets -> methods -> placement) whose
sections share the small Arch / ModelInfo / ActorPlan records.

`resolve_plan(cfg)` names the models (parameter counts from a `transformers` config when one is on disk —
a local path or the Hugging Face cache — else from a small table of the ids the recipes use), the dataset
(published split sizes or a count of local rows), the objectives, the Ray resources and placement of every
method's tasks and actors, an estimate of GPU memory per actor, and the number of steps. `pareto validate`
prints it for real-scale recipes.

The memory estimate is deliberately simple and errs high (it is for choosing GPUs, not for tuning):
weights × bytes per parameter, trainable (LoRA or critic) parameters × 16 bytes (fp32 weights, gradients and
two Adam moments), activations after Korthikanti et al. 2022 (≈ 34·s·b·h bytes per layer in 16-bit with flash
attention; with gradient checkpointing only each layer's input, 2·s·b·h bytes, is kept plus one layer's
worth), fp32 logits and their gradient (2 × 4·s·b·V bytes), a KV cache for generation, and 1 GiB of CUDA
context.
"""

from __future__ import annotations

import gzip
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pareto.config import DEFAULT_TARGETS, METHODS, PPO_METHODS, ExperimentConfig

GIB = 1024**3
CUDA_CONTEXT_GIB = 1.0
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TRAINABLE_BYTES = 16  # fp32 weight + fp32 grad + Adam m and v
ACT_BYTES_PER_LAYER = 34  # × s·b·h: Korthikanti et al. 2022, 16-bit, flash attention (no s² term)


class PlanError(ValueError):
    """The plan cannot work on the configured cluster (one line: what, and what to change)."""


@dataclass(frozen=True)
class Arch:
    """What the estimates need from a model's config."""

    params: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# Published architectures of the ids the recipes name (from their config.json), so a plan needs no download.
KNOWN_MODELS: dict[str, Arch] = {
    "Qwen/Qwen2.5-0.5B-Instruct": Arch(494_032_768, 896, 24, 14, 2, 4864, 151_936),
    "Qwen/Qwen2.5-1.5B-Instruct": Arch(1_543_714_304, 1536, 28, 12, 2, 8960, 151_936),
    "Qwen/Qwen2.5-3B-Instruct": Arch(3_085_938_688, 2048, 36, 16, 2, 11008, 151_936),
    "Qwen/Qwen2.5-7B-Instruct": Arch(7_615_616_512, 3584, 28, 28, 4, 18944, 152_064),
    "meta-llama/Llama-3.2-1B-Instruct": Arch(1_235_814_400, 2048, 16, 32, 8, 8192, 128_256),
    "meta-llama/Llama-3.1-8B-Instruct": Arch(8_030_261_248, 4096, 32, 32, 8, 14336, 128_256),
    "HuggingFaceTB/SmolLM2-360M-Instruct": Arch(361_821_120, 960, 32, 15, 5, 2560, 49_152),
    # GPT-2 large sequence classifiers (the RiC paper's reward models): the transformer plus a 1280 -> 1 head.
    "Ray2333/gpt2-large-helpful-reward_model": Arch(774_031_360, 1280, 36, 20, 20, 5120, 50_257),
    "Ray2333/gpt2-large-harmless-reward_model": Arch(774_031_360, 1280, 36, 20, 20, 5120, 50_257),
    "openai-community/gpt2-large": Arch(774_030_080, 1280, 36, 20, 20, 5120, 50_257),
}

# Published row counts of the datasets the recipes use (split -> rows); HH-RLHF per subset.
PUBLISHED_ROWS: dict[str, dict[str, int]] = {
    "PKU-Alignment/PKU-SafeRLHF": {"train": 73_907, "test": 8_211},
    "Anthropic/hh-rlhf": {"harmless-base/train": 42_537, "harmless-base/test": 2_312,
                          "helpful-base/train": 43_835, "helpful-base/test": 2_354,
                          "helpful-online/train": 22_007, "helpful-online/test": 1_137,
                          "helpful-rejection-sampled/train": 52_421, "helpful-rejection-sampled/test": 2_749},
    "nvidia/HelpSteer2": {"train": 20_324, "validation": 1_038},
    "openbmb/UltraFeedback": {"train": 63_967},
}
LOCAL_COUNT_LIMIT = 512 * 1024**2  # count rows of local files up to this size; larger ones stay "unknown"

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelInfo:
    role: str
    name: str
    arch: Arch | None
    source: str  # where the numbers come from: "config on disk", "known table", "tiny config", "unknown"
    dtype: str
    objectives: tuple[str, ...] = ()

    @property
    def params(self) -> int | None:
        return self.arch.params if self.arch else None

    def weight_gib(self, dtype: str | None = None) -> float | None:
        return None if self.arch is None else self.arch.params * BYTES[dtype or self.dtype] / GIB


def _arch_from_config(config: Any, sequence_classifier: bool) -> Arch:
    """Count parameters exactly by building the model on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if sequence_classifier else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # tied weights appear once

    def get(*names: str, default: int | None = None) -> int:
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        if default is None:
            raise AttributeError(names[0])
        return default

    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    return Arch(params=params, hidden=hidden, layers=get("num_hidden_layers", "n_layer"), heads=heads,
                kv_heads=get("num_key_value_heads", default=heads),
                intermediate=get("intermediate_size", "n_inner", default=4 * hidden), vocab=get("vocab_size"))


def describe_model(name: str, role: str, dtype: str, objectives: tuple[str, ...] = (),
                   sequence_classifier: bool = False) -> ModelInfo:
    """Architecture of `name` from a config on disk (local path or HF cache), else the known table. Never downloads."""
    try:
        from transformers import AutoConfig

        # local_files_only: a path or what the Hugging Face cache already holds; a miss raises instead of fetching.
        gguf = _gguf_file(name)
        config = (AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name) if gguf is not None  # metadata
                  else AutoConfig.from_pretrained(name, local_files_only=True))
        return ModelInfo(role, name, _arch_from_config(config, sequence_classifier), "config on disk", dtype,
                         objectives)
    except Exception:  # not cached, not a path, or an architecture transformers cannot build: use the table
        pass
    if name in KNOWN_MODELS:
        return ModelInfo(role, name, KNOWN_MODELS[name], "known table", dtype, objectives)
    return ModelInfo(role, name, None, "unknown (not on disk, not in pareto.plan.KNOWN_MODELS)", dtype, objectives)


def reference_text(cfg: ExperimentConfig) -> list[float] | str:
    """The hypervolume reference as configured: numbers, or the rule that derives it from the base model."""
    if cfg.evaluation.reference_point == "base":
        return f"the base model's point - {cfg.evaluation.reference_margin:g} (derived when it is scored)"
    return list(cfg.reference_point)


def _gguf_file(name: str) -> Path | None:
    """The GGUF file a `model.base` names (a path or package:<pkg>/<file>.gguf), if it is one."""
    if not name.endswith(".gguf"):
        return None
    from pareto.io import PACKAGE_PREFIX, package_path

    return package_path(name, "model.base") if name.startswith(PACKAGE_PREFIX) else Path(name).expanduser()


def tiny_model(cfg: ExperimentConfig) -> ModelInfo:
    t = cfg.model.tiny
    hd = t.hidden_size // t.num_heads
    per_layer = (t.hidden_size * hd * (t.num_heads * 2 + t.num_kv_heads * 2)  # q, o and k, v
                 + 3 * t.hidden_size * t.intermediate_size + 2 * t.hidden_size)
    params = t.num_layers * per_layer + 2 * t.vocab_size * t.hidden_size + t.hidden_size
    arch = Arch(params, t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.intermediate_size, t.vocab_size)
    return ModelInfo("policy", "tiny (built here)", arch, "tiny config", cfg.model.dtype)


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def lora_params(arch: Arch, targets: list[str], rank: int) -> int:
    """Trainable parameters of rank-`rank` adapters on `targets` in every layer: Σ rank · (d_in + d_out)."""
    h, hd = arch.hidden, arch.head_dim
    shapes = {"q_proj": (h, arch.heads * hd), "k_proj": (h, arch.kv_heads * hd), "v_proj": (h, arch.kv_heads * hd),
              "o_proj": (arch.heads * hd, h), "gate_proj": (h, arch.intermediate), "up_proj": (h, arch.intermediate),
              "down_proj": (arch.intermediate, h), "c_attn": (h, 3 * h), "c_fc": (h, arch.intermediate),
              "c_proj": (h, h)}
    names = list(LLAMA_TARGETS) if targets in (["all-linear"], "all-linear") else targets
    per_layer = sum(rank * sum(shapes.get(t, (h, h))) for t in names)
    return arch.layers * per_layer


def activation_bytes(arch: Arch, sequences: float, seq_len: int, checkpointing: bool) -> float:
    sbh = sequences * seq_len * arch.hidden
    if checkpointing:  # each layer's input is kept; one layer's activations exist during its recompute
        return arch.layers * 2 * sbh + ACT_BYTES_PER_LAYER * sbh
    return arch.layers * ACT_BYTES_PER_LAYER * sbh


def logits_bytes(arch: Arch, sequences: float, seq_len: int) -> float:
    return 2 * 4 * sequences * seq_len * arch.vocab  # fp32 logits for the log-softmax, and their gradient


def kv_cache_bytes(arch: Arch, sequences: float, seq_len: int, dtype: str) -> float:
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * BYTES[dtype] * sequences * seq_len


@dataclass
class ActorPlan:
    role: str
    count: int
    cpus: float
    gpus: float
    memory: dict[str, float] = field(default_factory=dict)  # component -> GiB, per actor
    note: str = ""

    @property
    def memory_gib(self) -> float | None:
        return sum(self.memory.values()) if self.memory else None


def _memory(**parts: float | None) -> dict[str, float]:
    """GiB per component (bytes in); an unknown component drops the whole estimate."""
    if any(v is None for v in parts.values()):
        return {}
    out = {k: float(v) / GIB for k, v in parts.items()}
    out["CUDA context"] = CUDA_CONTEXT_GIB
    return out


# --------------------------------------------------------------------------------------------------
# Dataset sizes
# --------------------------------------------------------------------------------------------------


def _slice_fraction(expr: str) -> float:
    m = re.search(r"\[(.*):(.*)\]", expr)
    if not m:
        return 1.0
    lo, hi = (s.strip() for s in m.groups())
    if (lo and not lo.endswith("%")) or (hi and not hi.endswith("%")):
        return math.nan  # absolute rows: the count is the slice length, handled by the caller
    a = float(lo[:-1]) if lo else 0.0
    b = float(hi[:-1]) if hi else 100.0
    a, b = (a + 100 if a < 0 else a), (b + 100 if b < 0 else b)
    return max(0.0, min(b, 100.0) - max(a, 0.0)) / 100


def _count_local_rows(path: Path) -> int | None:
    try:
        if path.stat().st_size > LOCAL_COUNT_LIMIT:
            return None
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if path.suffix == ".json":
            import json

            return len(json.loads(path.read_text(encoding="utf-8")))
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except (OSError, ValueError):
        return None


def _source_rows(cfg: ExperimentConfig, split_name: str, subset: str | None) -> tuple[int | None, str]:
    ds = cfg.task.dataset
    assert ds is not None
    if ds.hub_id is not None:
        key = f"{subset}/{split_name}" if subset else split_name
        rows = PUBLISHED_ROWS.get(ds.hub_id, {}).get(key)
        return rows, "published size" if rows is not None else "size unknown until loaded"
    from pareto.data.loaders import EXTENSIONS, local_root

    root = local_root(ds.path)
    if root.is_file():
        return _count_local_rows(root), "rows counted"
    base = root / subset if subset else root
    for candidate in [base / split_name] + [base / f"{split_name}{ext}" for ext in EXTENSIONS]:
        if candidate.is_file():
            return _count_local_rows(candidate), "rows counted"
    return None, "file not found"


def _pairs_per_row(cfg: ExperimentConfig) -> float:
    ds = cfg.task.dataset
    assert ds is not None
    if ds.format == "helpsteer2":
        return 0.5  # two responses per prompt -> one pair
    if ds.format == "ultrafeedback":
        return float(min(6, ds.max_pairs_per_prompt or 6))  # four completions -> up to 6 pairs
    return 1.0


@dataclass
class SplitPlan:
    split: str
    expr: str
    pairs: int | None
    how: str


def dataset_splits(cfg: ExperimentConfig) -> list[SplitPlan]:
    ds = cfg.task.dataset
    if ds is None:
        return []
    out = []
    for ours, expr in ds.splits.items():
        name = expr.split("[", 1)[0]
        subsets = [None]
        if ds.format == "hh_rlhf":
            subsets = [s for v in ds.labels.values() for s in (v if isinstance(v, list) else [v])]
        total: float | None = 0.0
        how = ""
        for subset in subsets:
            rows, how = _source_rows(cfg, name, subset)
            if rows is None or total is None:
                total = None
                continue
            frac = _slice_fraction(expr)
            if math.isnan(frac):  # absolute slice such as [:1000]
                lo, hi = re.search(r"\[(.*):(.*)\]", expr).groups()
                start = int(lo or 0) + (rows if lo.startswith("-") else 0)
                stop = int(hi) + (rows if hi.startswith("-") else 0) if hi else rows
                picked = max(0, min(stop, rows) - max(start, 0))
            else:
                picked = rows * frac
            if ds.max_rows:
                picked = min(picked, ds.max_rows)
            total += picked * _pairs_per_row(cfg)
        out.append(SplitPlan(ours, expr, None if total is None else int(total), how))
    return out


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


@dataclass
class MethodPlan:
    name: str
    title: str
    models_trained: int
    steps: str
    actors: list[ActorPlan]
    concurrency: int = 1


@dataclass
class Plan:
    name: str
    objectives: list[str]
    reference_point: list[float] | str
    task: str
    dataset: dict[str, Any] | None
    splits: list[SplitPlan]
    models: list[ModelInfo]
    cluster: dict[str, Any] | None
    ray: dict[str, Any]
    methods: list[MethodPlan]
    evaluation: str
    warnings: list[str] = field(default_factory=list)
    training: str = ""  # device, autocast precision, checkpointing, LoRA placement: what the stages will do

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for m, info in zip(out["models"], self.models, strict=True):
            m["params"] = info.params
            m["weight_gib"] = info.weight_gib()
        for mp, method in zip(out["methods"], self.methods, strict=True):
            for ap, actor in zip(mp["actors"], method.actors, strict=True):
                ap["memory_gib"] = actor.memory_gib
        return out

    def render(self) -> str:
        lines = [f"plan: {self.name} (resolved offline; nothing downloaded)",
                 f"  objectives  {', '.join(self.objectives)}; hypervolume reference point {self.reference_point}"]
        if self.dataset:
            d = self.dataset
            where = f"hub {d['hub_id']}" if d.get("hub_id") else f"local {d['path']}"
            subset = f" (subset {d['subset']})" if d.get("subset") else ""
            lines.append(f"  dataset     {d['format']} from {where}{subset}")
            for s in self.splits:
                size = f"~{s.pairs:,} pairs" if s.pairs is not None else "pairs unknown"
                lines.append(f"              {s.split:<5} <- {s.expr!r}: {size} ({s.how})")
            labels = ", ".join(f"{k} <- {v}" for k, v in d["labels"].items())
            lines.append(f"              labels: {labels}")
        else:
            lines.append(f"  task        {self.task} (embedded)")
        for m in self.models:
            size = _count(m.params) + " params" if m.params else "params unknown"
            weights = f", {m.weight_gib():.2f} GiB in {m.dtype}" if m.params else ""
            scored = f" -> {', '.join(m.objectives)}" if m.objectives else ""
            lines.append(f"  model       {m.role:<9} {m.name}{scored}: {size}{weights} ({m.source})")
        if self.cluster:
            c = self.cluster
            lines.append(f"  cluster     {c['nodes']} node(s) × {c['gpus_per_node']} {c['gpu']} "
                         f"({c['gpu_memory_gib']:g} GiB each), {c['cpus_per_node']} CPUs per node; "
                         f"seq_len {c['seq_len']}")
        if self.training:
            lines.append(f"  training    {self.training}")
        lines.append(f"  ray         address {self.ray['address']}; asks at most {self.ray['gpus']:g} GPU(s), "
                     f"{self.ray['cpus']:g} CPU(s) at once")
        for mp in self.methods:
            lines.append(f"  method {mp.name}: {mp.title}")
            lines.append(f"    models    {mp.models_trained} trained"
                         + (f", {mp.concurrency} at a time" if mp.models_trained > 1 else ""))
            lines.append(f"    steps     {mp.steps}")
            for a in mp.actors:
                mem = a.memory_gib
                parts = " + ".join(f"{k} {v:.1f}" for k, v in a.memory.items() if v >= 0.05)
                kind = "GPU memory" if a.gpus > 0 else "host memory"
                mem_text = f"~{mem:.1f} GiB {kind}" + (f" ({parts})" if parts else "") if mem is not None \
                    else "memory unknown"
                lines.append(f"    {a.role:<9} ×{a.count} {a.cpus:g} CPU {a.gpus:g} GPU each; {mem_text}"
                             + (f"; {a.note}" if a.note else ""))
        lines.append(f"  evaluation  {self.evaluation}")
        lines += [f"  warning     {w}" for w in self.warnings]
        return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _grid_size(cfg: ExperimentConfig, mcfg: Any) -> int:
    weights = getattr(mcfg, "weights", None)
    if weights:
        return len(weights)
    from pareto.front.grid import preference_grid

    return len(preference_grid(cfg.k, n_points=cfg.evaluation.grid_points))


def _train_pairs(splits: list[SplitPlan]) -> int | None:
    return next((s.pairs for s in splits if s.split == "train"), None)


def _epochs(seen: int, n_train: int | None) -> str:
    return f" ≈ {seen / n_train:.2f} epochs of train" if n_train else ""


def _eval_reward_bytes(cfg: ExperimentConfig, rewards: list[ModelInfo]) -> float | None:
    """Reward models the evaluation loads next to the policy (same task), if it scores with them."""
    if cfg.evaluation.scorer != "reward_model" or not rewards:
        return 0.0
    return sum(r.params * BYTES[r.dtype] for r in rewards) if all(r.params for r in rewards) else None


def _dpo_method(cfg: ExperimentConfig, name: str, mcfg: Any, policy: ModelInfo, rewards: list[ModelInfo],
                splits: list[SplitPlan], seq_len: int, ckpt: bool) -> MethodPlan:
    arch = policy.arch
    k = cfg.k
    if METHODS[name].per_lambda:
        n_models = _grid_size(cfg, mcfg)
    elif name == "soups":
        n_models = k
    else:
        n_models = 1
    rank = mcfg.lora_rank + (k if name == "panacea" else 0)  # Panacea: k learned + K preference singular values
    trainable = None
    if arch:
        trainable = lora_params(arch, mcfg.target_modules, rank)
        if name == "mah_dpo":  # K LM-head deltas; the top head_layers layers trade their backbone LoRA for K deltas
            trainable += k * mcfg.head_rank * (arch.hidden + arch.vocab)
            top = min(mcfg.head_layers, arch.layers)
            heads = lora_params(arch, mcfg.target_modules or DEFAULT_TARGETS, k * mcfg.head_rank) // arch.layers
            trainable += top * (heads - lora_params(arch, mcfg.target_modules, rank) // arch.layers)
    sequences = 2 * mcfg.batch_size  # chosen and rejected; the reference pass (adapter off) shares the weights
    memory = _memory(
        weights=arch.params * BYTES[policy.dtype] if arch else None,
        **{"adapter+optimizer": trainable * TRAINABLE_BYTES if trainable is not None else None},
        activations=activation_bytes(arch, sequences, seq_len, ckpt) if arch else None,
        logits=logits_bytes(arch, sequences, seq_len) if arch else None,
        **{"reward models (evaluation)": _eval_reward_bytes(cfg, rewards)})
    seen = mcfg.max_steps * mcfg.batch_size * mcfg.grad_accum
    steps = (f"≤ {mcfg.max_steps:,} optimizer steps per model × {mcfg.batch_size * mcfg.grad_accum} pairs = "
             f"{seen:,} pairs{_epochs(seen, _train_pairs(splits))} (early stopping checks every {mcfg.eval_every}"
             f"{f' from step {mcfg.eval_start}' if mcfg.eval_start else ''})")
    res = cfg.resources
    actor = ActorPlan("trainer", 1, res.cpus_per_task, res.gpus_per_task, memory,
                      note="one Ray task per model (resources.cpus_per_task / gpus_per_task)")
    return MethodPlan(name, METHODS[name].title, n_models, steps, [actor])


def _ric_method(cfg: ExperimentConfig, mcfg: Any, policy: ModelInfo, rewards: list[ModelInfo],
                splits: list[SplitPlan], seq_len: int, ckpt: bool) -> MethodPlan:
    arch = policy.arch
    full = getattr(mcfg, "lora_rank", None) is None  # no LoRA rank: full fine-tuning
    trainable = None
    if arch:
        trainable = arch.params if full else lora_params(arch, mcfg.target_modules, mcfg.lora_rank)
    reward_bytes = sum(r.params * BYTES[r.dtype] for r in rewards) if all(r.params for r in rewards) else None
    memory = _memory(
        weights=arch.params * BYTES[policy.dtype] if arch else None,
        **{("full fine-tune grads+optimizer" if full else "adapter+optimizer"):
           trainable * TRAINABLE_BYTES if trainable is not None else None},
        activations=activation_bytes(arch, mcfg.batch_size, seq_len, ckpt) if arch else None,
        logits=logits_bytes(arch, mcfg.batch_size, seq_len) if arch else None,
        **{"reward models": reward_bytes if mcfg.online_rounds else 0.0})
    n_train = _train_pairs(splits)
    samples = mcfg.offline_samples or (2 * n_train if n_train else None)
    offline = (f"offline SFT {mcfg.epochs} epoch(s) × ⌈{samples:,}/{mcfg.batch_size}⌉ = "
               f"{mcfg.epochs * math.ceil(samples / mcfg.batch_size):,} steps" if samples else
               f"offline SFT {mcfg.epochs} epoch(s) over all samples")
    online = (f"; then {mcfg.online_rounds} rejection-sampling round(s) of {mcfg.online_prompts} generations "
              f"(+{mcfg.origin_samples} offline samples) × {mcfg.online_epochs} epoch(s)") if mcfg.online_rounds else ""
    res = cfg.resources
    actor = ActorPlan("trainer", 1, res.cpus_per_task, res.gpus_per_task, memory,
                      note="one Ray task; scores samples with the reward models in the same process")
    return MethodPlan("ric", METHODS["ric"].title, 1, offline + online, [actor])


def _ppo_method(cfg: ExperimentConfig, name: str, mcfg: Any, policy: ModelInfo, rewards: list[ModelInfo],
                seq_len: int, ckpt: bool) -> MethodPlan:
    ppo, arch, k = cfg.ppo, policy.arch, cfg.k
    n_models = _grid_size(cfg, mcfg) if METHODS[name].per_lambda else 1
    rank = mcfg.lora_rank + (k if METHODS[name].policy else 0)  # the conditioned (SVD-LoRA) policy adds K
    critic = mcfg.critic != "none"  # GRPO: no critic on the trainer ranks
    per_rank = mcfg.rows_per_step / (ppo.trainer.count * mcfg.minibatches)  # sequences per micro-batch
    weights = arch.params * BYTES[policy.dtype] if arch else None
    trainer_mem = _memory(
        **{"policy weights": weights,
           "policy adapter+optimizer": lora_params(arch, mcfg.target_modules, rank) * TRAINABLE_BYTES if arch else None,
           "critic (full backbone)+optimizer": arch.params * TRAINABLE_BYTES * critic if arch else None,
           "activations (policy+critic)": (1 + critic) * activation_bytes(arch, per_rank, seq_len, ckpt)
           if arch else None,
           "logits": logits_bytes(arch, per_rank, seq_len) if arch else None})
    rows = mcfg.rows_per_step / ppo.rollout.count
    rollout_mem = _memory(weights=weights, **{"KV cache": kv_cache_bytes(arch, rows, seq_len, policy.dtype)
                                              if arch else None})
    engine_note = ("vLLM preallocates gpu_memory_utilization (0.9 by default) of its GPU for weights + KV cache"
                   if ppo.engine == "vllm" else "transformers generate")
    if rewards:
        known = all(r.params for r in rewards)
        reward_mem = _memory(**{"reward models": sum(r.params * BYTES[r.dtype] for r in rewards) if known else None})
        reward_note = "HF reward models: " + ", ".join(r.name for r in rewards)
    else:
        reward_mem = _memory(**{"MiniLM + heads": 23e6 * 4})
        reward_note = "learned MiniLM heads (and rule-based objectives)"
    actors = [
        ActorPlan("trainer", ppo.trainer.count, ppo.trainer.cpus, ppo.trainer.gpus, trainer_mem,
                  note=f"torch DDP ranks in one placement group ({ppo.placement_strategy})"),
        ActorPlan("rollout", ppo.rollout.count, ppo.rollout.cpus, ppo.rollout.gpus, rollout_mem, note=engine_note),
        ActorPlan("reward", ppo.reward.count, ppo.reward.cpus, ppo.reward.gpus, reward_mem, note=reward_note),
        ActorPlan("reference", ppo.reference.count, ppo.reference.cpus, ppo.reference.gpus,
                  _memory(weights=weights), note="KL to the reference policy"),
    ]
    updates = mcfg.max_steps * mcfg.ppo_epochs * mcfg.minibatches
    tokens = mcfg.max_steps * mcfg.rows_per_step * mcfg.max_new_tokens
    algo = "PPO" if critic else "GRPO"
    steps = (f"{mcfg.max_steps:,} {algo} iterations per model × {mcfg.rows_per_step} rollouts "
             f"({mcfg.prompts_per_step} prompts × {mcfg.samples_per_prompt}) = {updates:,} optimizer steps, "
             f"≤ {tokens:,} generated tokens")
    return MethodPlan(name, METHODS[name].title, n_models, steps, actors)


def resolve_plan(cfg: ExperimentConfig) -> Plan:
    """Everything `pareto validate` reports about a run on its cluster; raises PlanError if it cannot be placed."""
    cluster = cfg.resources.cluster
    seq_len = cluster.seq_len if cluster else 1024
    if cfg.model.max_prompt_tokens and cfg.model.max_response_tokens:  # the budget training fits rows into
        seq_len = cfg.model.max_prompt_tokens + cfg.model.max_response_tokens
    ckpt = cfg.model.gradient_checkpointing  # what training does (pareto.models.device), not an assumption
    if cfg.model.base == "tiny":
        policy = tiny_model(cfg)
        seq_len = cfg.model.tiny.max_length if cluster is None else seq_len
    else:
        policy = describe_model(cfg.model.base, "policy", cfg.model.dtype)
    rewards = [describe_model(rm.model, "reward", rm.dtype, tuple(rm.objectives), sequence_classifier=True)
               for rm in cfg.reward_model.hf]
    splits = dataset_splits(cfg)
    methods: list[MethodPlan] = []
    for name, mcfg in cfg.methods.enabled().items():
        if name in PPO_METHODS:
            methods.append(_ppo_method(cfg, name, mcfg, policy, rewards, seq_len, ckpt))
        elif name == "ric":
            methods.append(_ric_method(cfg, mcfg, policy, rewards, splits, seq_len, ckpt))
        else:
            methods.append(_dpo_method(cfg, name, mcfg, policy, rewards, splits, seq_len, ckpt))

    peak_gpus, peak_cpus = _place(cfg, methods)
    warnings = _memory_warnings(cfg, methods)
    if policy.arch is None:
        warnings.append(f"{policy.name}: parameter count unknown offline; memory estimates are missing (add it to "
                        "pareto.plan.KNOWN_MODELS or put its config.json in the Hugging Face cache)")

    ds = cfg.task.dataset
    ev = cfg.evaluation
    from pareto.front.grid import preference_grid

    grid = len(preference_grid(cfg.k, n_points=ev.grid_points))
    prompts = ev.n_prompts or "all"
    evaluation = (f"λ grid of {grid} points × {prompts} held-out prompts, {ev.max_new_tokens} new tokens, "
                  f"scored by {ev.scorer}")
    address = (cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")
               or "$RAY_ADDRESS (set by `ray job submit`), else a local Ray")
    return Plan(training=_training_line(cfg, seq_len),
        name=cfg.name, objectives=list(cfg.objectives), reference_point=reference_text(cfg),
        task=cfg.task.name, dataset=ds.model_dump(mode="json") if ds else None, splits=splits,
        models=[policy, *rewards], cluster=cluster.model_dump(mode="json") if cluster else None,
        ray={"address": address, "gpus": peak_gpus, "cpus": peak_cpus}, methods=methods, evaluation=evaluation,
        warnings=warnings)


def _place(cfg: ExperimentConfig, methods: list[MethodPlan]) -> tuple[float, float]:
    """Ray placement: how many of each method's tasks run at once (sets `concurrency`), and the peak GPUs and CPUs
    the run asks for; raises PlanError when the cluster cannot hold it."""
    cluster = cfg.resources.cluster
    res = cfg.resources
    total_gpus = cluster.nodes * cluster.gpus_per_node if cluster else 0
    total_cpus = cluster.nodes * cluster.cpus_per_node if cluster else res.num_cpus or os.cpu_count() or 1
    # The pipeline starts every method at once. A PPO method's task drives one actor group that holds its
    # resources for the whole run (trainer ranks wait for their placement group); plain method tasks queue.
    held_gpu = held_cpu = 0.0
    for mp in methods:
        if cluster and any(a.gpus > cluster.gpus_per_node for a in mp.actors):
            raise PlanError(f"method {mp.name}: an actor asks for more GPUs than one node has "
                            f"({cluster.gpus_per_node}); an actor runs on one node")
        if mp.name not in PPO_METHODS:
            continue
        held_gpu += sum(a.count * a.gpus for a in mp.actors) + res.gpus_per_task
        held_cpu += sum(a.count * a.cpus for a in mp.actors) + res.cpus_per_task
        trainer = cfg.ppo.trainer
        if cluster and cfg.ppo.placement_strategy == "STRICT_PACK" and \
                trainer.count * trainer.gpus > cluster.gpus_per_node:
            raise PlanError(f"ppo.placement_strategy: STRICT_PACK puts {trainer.count} trainer ranks × "
                            f"{trainer.gpus:g} GPU on one node, which has {cluster.gpus_per_node}; "
                            "use PACK or fewer ranks")
    if cluster and held_gpu > total_gpus + 1e-9:
        raise PlanError(f"the PPO methods' actor groups run at once and hold {held_gpu:g} GPUs, but "
                        f"resources.cluster has {total_gpus}; lower ppo.<role>.gpus, run fewer methods, or add nodes")
    if cluster and held_cpu > total_cpus + 1e-9:
        raise PlanError(f"the PPO methods' actor groups hold {held_cpu:g} CPUs, but there are {total_cpus}; "
                        "lower ppo.<role>.cpus or resources.cpus_per_task")
    free_gpu, free_cpu = total_gpus - held_gpu, total_cpus - held_cpu
    ask_gpu = ask_cpu = 0.0
    for mp in methods:
        if mp.name in PPO_METHODS:
            continue
        task = mp.actors[0]
        fits = mp.models_trained
        if task.cpus > 0:
            fits = min(fits, int(free_cpu // task.cpus))
        if cluster and task.gpus > 0:
            fits = min(fits, int(free_gpu // task.gpus))
        if fits < 1 and cluster:
            raise PlanError(f"method {mp.name}: a task asks for {task.cpus:g} CPU and {task.gpus:g} GPU, more than "
                            f"the {free_cpu:g} CPU / {free_gpu:g} GPU left; lower resources.cpus_per_task / "
                            "gpus_per_task")
        mp.concurrency = max(fits, 1)
        ask_gpu += task.gpus * mp.models_trained
        ask_cpu += task.cpus * mp.models_trained
    peak_gpus = held_gpu + (min(free_gpu, ask_gpu) if cluster else ask_gpu)
    peak_cpus = held_cpu + min(free_cpu, ask_cpu)
    return peak_gpus, peak_cpus


def _memory_warnings(cfg: ExperimentConfig, methods: list[MethodPlan]) -> list[str]:
    """Actors whose memory estimate exceeds their GPU share, or that run a large model on CPU on a GPU cluster."""
    cluster = cfg.resources.cluster
    total_gpus = cluster.nodes * cluster.gpus_per_node if cluster else 0
    warnings: list[str] = []
    for mp in methods:
        for a in mp.actors:
            if a.gpus <= 0:
                a.memory.pop("CUDA context", None)  # host memory: no CUDA context
            mem = a.memory_gib
            if cluster is None or mem is None:
                continue
            if a.gpus <= 0:
                if total_gpus and mem > 2.0:  # big models on CPU on a GPU cluster: almost surely a slip
                    knob = f"ppo.{a.role}.gpus" if mp.name in PPO_METHODS else "resources.gpus_per_task"
                    warnings.append(f"{mp.name} {a.role} (~{mem:.1f} GiB) asks for no GPU, so it runs on CPU; "
                                    f"set {knob}")
                continue
            budget = cluster.gpu_memory_gib * min(a.gpus, 1.0)  # one process uses one device
            if mem > budget:
                warnings.append(f"{mp.name} {a.role}: ~{mem:.1f} GiB estimated > {budget:.0f} GiB of GPU memory it "
                                "is given; use a smaller batch, shorter seq_len, or a larger GPU share")
    return warnings


def _training_line(cfg: ExperimentConfig, seq_len: int) -> str:
    """What the stages do on the device each task gets (`pareto.models.device.Placement`), stated once."""
    gpu = cfg.resources.gpus_per_task > 0
    precision = {"fp32": "fp32", "bf16": "bf16 autocast",
                 "auto": "bf16 autocast (auto: on a GPU with bf16)" if gpu else "fp32 (auto on CPU)"}
    ckpt = "on" if cfg.model.gradient_checkpointing else "off"
    return (f"{'GPU ' + format(cfg.resources.gpus_per_task, 'g') if gpu else 'CPU'} per task, "
            f"{precision[cfg.model.precision]}, gradient checkpointing {ckpt}, "
            f"weights {cfg.model.dtype}, {seq_len} tokens per sequence")


def is_real_scale(cfg: ExperimentConfig) -> bool:
    """A recipe meant for a cluster: a real dataset, a hub/local base model, HF reward models or a cluster section."""
    return (cfg.task.dataset is not None or cfg.model.base != "tiny" or bool(cfg.reward_model.hf)
            or cfg.resources.cluster is not None)
