"""Where and how a run executes: the PPO actors, evaluation, tracking, resources and the cluster, serving, sweeps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pareto.config.base import ServerURL, Strict, VLLMRank


class ClusterConfig(Strict):
    """The GPU cluster a real-scale recipe is planned for (read by `pareto validate`, never needed locally)."""

    gpu: str = Field("A100-80GB", description="accelerator label (documentation and the plan)")
    gpu_memory_gib: float = Field(80.0, gt=0)
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(8, ge=1)
    cpus_per_node: int = Field(32, ge=1)
    seq_len: int = Field(1024, ge=16, description="tokens per sequence (prompt + response) for memory estimates; "
                                                 "model.max_prompt_tokens + max_response_tokens when both are set")



class ActorShare(Strict):
    """One actor role: how many, and what each asks of the cluster (fractions share a CPU or GPU)."""

    count: int = Field(1, ge=1)
    cpus: float = Field(0.5, ge=0)
    gpus: float = Field(0.0, ge=0)
    threads: int = Field(1, ge=1, description="torch threads inside each actor")





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



class EvaluationConfig(Strict):
    grid_points: int = Field(6, ge=2, description="λ grid size (uniform for K=2, Das-Dennis for K>=3)")
    n_prompts: int | None = Field(None, ge=2, description="held-out prompts per λ; null = all")
    max_new_tokens: int = Field(48, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    repetition_penalty: float = Field(
        1.0, ge=1.0, le=2.0, description="CTRL-style penalty on tokens already in the prompt or answer (1 = none; "
                                         "HF and vLLM apply it alike); also used when the front is served")
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
    cpu_kernels: Literal["portable", "native"] = Field(
        "portable", description="x86 CPU code paths of torch's kernels in every Ray worker: 'portable' pins ATen "
                                "and oneDNN to AVX2 and MKL to its vendor-neutral reproducible branch (the same "
                                "front from the same config and seed on any AVX2 machine, Intel or AMD); 'native' "
                                "lets them pick the fastest the CPU has (float32 GEMM ~2.5x faster, but fronts "
                                "differ between CPU models). No effect on GPU kernels")
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


