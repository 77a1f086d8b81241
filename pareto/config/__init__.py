"""The experiment schema: one YAML file describes a whole pareto run.

Loaded with `yaml.safe_load` and validated by pydantic before any compute starts. Every problem becomes a
one-line `ConfigError` that names the field and says how to fix it. The package's modules, by job:

- `base`: the error types, the strict base model, the simplex check, constants;
- `data`: the task (embedded or a real dataset), the base model and the reward model sections;
- `methods`: each method's section and **the method table** (`METHODS`), the one place a method is described;
- `runtime`: evaluation, tracking, resources and the cluster, the PPO actors, serving, sweeps;
- `experiment`: the whole experiment and the checks that span sections;
- `loading`: YAML and `--set` overrides, one-line errors;
- `masking`: masking secrets before anything is logged.
"""

from pareto.config.base import (
    DEFAULT_TARGETS,
    KNOWN_TASKS,
    VLLM_LORA_RANKS,
    Z_REFERENCE,
    ConfigError,
    FieldError,
    Strict,
    simplex_problem,
)
from pareto.config.data import (
    DATASET_FORMATS,
    DATASET_SPLITS,
    HELPSTEER2_ATTRIBUTES,
    ULTRAFEEDBACK_ASPECTS,
    DatasetConfig,
    HFRewardModelConfig,
    ModelConfig,
    RewardModelConfig,
    TaskConfig,
    TinyModelConfig,
)
from pareto.config.experiment import ExperimentConfig
from pareto.config.loading import config_from_dict, dump_config, load_config, parse_overrides
from pareto.config.masking import MASK, flatten, mask_secrets, mask_url
from pareto.config.methods import (
    DPO_METHODS,
    LABELLED_METHODS,
    METHODS,
    PPO_METHODS,
    REWARD_SOURCES,
    SFT_METHODS,
    DPOConfig,
    FixedDPOConfig,
    GRPOMethodConfig,
    MAHDPOConfig,
    MethodConfig,
    MethodsConfig,
    MethodSpec,
    MODPOConfig,
    MORLGRPOConfig,
    MORLHFConfig,
    PanaceaConfig,
    PanaceaGRPOConfig,
    PanaceaPPOConfig,
    PerWeightConfig,
    PPOMethodConfig,
    RiCConfig,
    SoupsConfig,
    method_of,
    spec_for,
)
from pareto.config.runtime import (
    SWEEP_SAMPLERS,
    ActorShare,
    ClusterConfig,
    EvaluationConfig,
    PPOConfig,
    PPOVLLMConfig,
    ResourcesConfig,
    SearchRange,
    ServingConfig,
    SweepConfig,
    TrackingConfig,
)

__all__ = [
    "ActorShare", "ClusterConfig", "ConfigError", "DATASET_FORMATS", "DATASET_SPLITS", "DEFAULT_TARGETS", "DPOConfig",
    "DPO_METHODS", "DatasetConfig", "EvaluationConfig", "ExperimentConfig", "FieldError", "FixedDPOConfig",
    "GRPOMethodConfig", "HELPSTEER2_ATTRIBUTES", "HFRewardModelConfig", "KNOWN_TASKS", "LABELLED_METHODS",
    "MAHDPOConfig", "MASK", "METHODS", "MODPOConfig", "MORLGRPOConfig", "MORLHFConfig", "MethodConfig", "MethodSpec",
    "MethodsConfig", "ModelConfig", "PPOConfig", "PPOMethodConfig", "PPOVLLMConfig", "PPO_METHODS", "PanaceaConfig",
    "PanaceaGRPOConfig", "PanaceaPPOConfig", "PerWeightConfig", "REWARD_SOURCES", "ResourcesConfig",
    "RewardModelConfig", "RiCConfig", "SFT_METHODS", "SWEEP_SAMPLERS", "SearchRange", "ServingConfig", "SoupsConfig",
    "Strict", "SweepConfig", "TaskConfig", "TinyModelConfig", "TrackingConfig", "ULTRAFEEDBACK_ASPECTS",
    "VLLM_LORA_RANKS", "Z_REFERENCE", "config_from_dict", "dump_config", "flatten", "load_config", "mask_secrets",
    "mask_url", "method_of", "parse_overrides", "simplex_problem", "spec_for",
]
