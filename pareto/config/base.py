"""What every config module shares: the error types, the strict base model, the simplex check and the constants
that validation needs without compute."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer

KNOWN_TASKS: dict[str, tuple[str, ...]] = {"tiny-hh": ("helpful", "harmless", "concise")}
Z_REFERENCE = -3.0  # hypervolume reference of z-scored reward-model fronts (pareto.front.metrics re-exports it)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A config problem, phrased as one line: where it is and how to fix it."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TieWeighted(Strict):
    """A section whose preference loss can fit ties (the reward model's Bradley–Terry loss, every DPO loss)."""

    # options added after configs were cached: left out of a dump at their default, so the cache keys (digests) of
    # configs that do not use them stay as they were
    DROPPED_AT_DEFAULT: ClassVar[dict[str, Any]] = {"tie_weight": 0.0}

    tie_weight: float = Field(0.0, ge=0, description="weight of a tie term: pairs tied on an objective (label -1) are "
                                                     "fit to a 50/50 preference (equal reward-model scores, or equal "
                                                     "DPO implicit rewards); only where -1 is a real tie (tiny-hh: "
                                                     "harmless on safe prompts), not a missing label")

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler: Any) -> dict:
        data = handler(self)
        for name, default in self.DROPPED_AT_DEFAULT.items():
            if getattr(self, name) == default:
                data.pop(name, None)
        return data


class FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def simplex_problem(weights: Any, k: int) -> str | None:
    """Why `weights` is not a preference on the K-simplex, or None if it is (pareto.front.grid.validate_weights:
    the one simplex check, its tolerance and its messages)."""
    from pareto.front.grid import validate_weights

    try:
        validate_weights(weights, k)
    except ValueError as err:
        return str(err).removeprefix("weights: ")
    return None



# vLLM's max_lora_rank must be one of these (the one list: svd_lora pads adapters to them, configs are checked here).
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
