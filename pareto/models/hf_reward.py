"""Real Hugging Face reward models behind the `VectorReward` interface (`[B, K]`, never summed early).

A reward model here is any `AutoModelForSequenceClassification` checkpoint: a single-output Bradley–Terry model
such as the RiC paper's `Ray2333/gpt2-large-helpful-reward_model`, or a multi-output (multi-attribute) model whose
logits are one score per attribute. Each `HFRewardModel` scores the objectives its config names (one logit each,
picked by index or by `id2label` name); `HFVectorReward` runs every model once per batch and places the columns
in the experiment's objective order, then z-scores them with a frozen `RunningZScore`.

How a (prompt, response) becomes model input is the model's convention, set per model by `template`:
``pair`` (``tokenizer(prompt, response)``, what the Ray2333 models' cards use), ``hh`` (the same with the prompt
in HH-RLHF transcript form), ``chat`` (the tokenizer's chat template) or a format string. Batches are
right-padded, so positions match the unpadded input and the model pools the last real token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pareto.config import HFRewardModelConfig
from pareto.models.device import no_autocast, resolve_device
from pareto.objectives.base import RunningZScore, ZScoredReward

HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RewardModelError(ValueError):
    """A reward-model problem in one line, naming the model and the setting to change."""


def hh_prompt(prompt: str) -> str:
    """A prompt in HH-RLHF transcript form ('\\n\\nHuman: ...\\n\\nAssistant:'), unchanged if it already is."""
    if prompt.startswith(HH_HUMAN):
        return prompt if prompt.rstrip().endswith(HH_ASSISTANT.strip()) else prompt.rstrip() + HH_ASSISTANT
    return f"{HH_HUMAN} {prompt.strip()}{HH_ASSISTANT}"


def default_device() -> str:
    """The device of an `HFRewardModel` built without one (direct use); pipelines pass their Placement's."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class HFRewardModel:
    """One sequence-classification checkpoint -> scores `[B, len(objectives)]` for the objectives it serves.

    The weights load in `dtype` (default: the spec's `dtype`) onto `device` (default: a GPU when one is visible);
    scores come back float32 on the CPU.
    """

    def __init__(self, spec: HFRewardModelConfig, device: str | torch.device | None = None,
                 dtype: str | None = None, local_files_only: bool | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.spec = spec
        self.objectives = tuple(spec.objectives)
        self.device = torch.device(device or default_device())
        load: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
        if local_files_only is not None:
            load["local_files_only"] = local_files_only
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(spec.model, **load)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                spec.model, dtype=_DTYPES[dtype or spec.dtype], **load)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise RewardModelError(f"reward model {spec.model!r} could not be loaded ({first}); check the id or "
                                   "path, or pre-download it into the Hugging Face cache") from None
        self.model.to(self.device).eval().requires_grad_(False)
        # GPT-2-style checkpoints ship without a pad token: pad with EOS (what their model cards do), and tell the
        # model, which pools the rightmost non-pad token.
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise RewardModelError(f"reward model {spec.model!r}: its tokenizer has neither a pad nor an EOS "
                                       "token, so batches cannot be padded")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"  # keep positions as in the unpadded input (GPT-2 has absolute ones)
        self.tokenizer.truncation_side = "left"  # over-long inputs lose the start of the prompt, not the reply
        self.indices = self._resolve_outputs()
        if spec.template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise RewardModelError(f"reward model {spec.model!r}: template 'chat' needs a tokenizer chat template; "
                                   "set template to 'pair', 'hh' or a format string with {prompt} and {response}")

    def _resolve_outputs(self) -> list[int]:
        n_labels = int(self.model.config.num_labels)
        wanted = self.spec.outputs if self.spec.outputs is not None else list(range(len(self.objectives)))
        label2id = {str(v).lower(): int(k) for k, v in (self.model.config.id2label or {}).items()}
        indices = []
        for out in wanted:
            if isinstance(out, str):
                if out.lower() not in label2id:
                    raise RewardModelError(f"reward model {self.spec.model!r}: outputs names {out!r}, which is not "
                                           f"one of its labels {sorted(label2id)}; use a label or an index")
                out = label2id[out.lower()]
            if not 0 <= out < n_labels:
                raise RewardModelError(f"reward model {self.spec.model!r}: output index {out} out of range; it has "
                                       f"{n_labels} output(s) (num_labels), so use 0..{n_labels - 1} in outputs")
            indices.append(int(out))
        return indices

    # -- inputs --------------------------------------------------------------------------------------------------
    def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[str], list[str] | None]:
        """The model-facing text(s): (first segments, second segments or None for single-text templates)."""
        template = self.spec.template
        if template == "pair":
            return list(prompts), list(responses)
        if template == "hh":
            return [hh_prompt(p) for p in prompts], list(responses)  # as on the Ray2333 model cards
        if template == "chat":
            return [self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
                for p, r in zip(prompts, responses, strict=True)], None
        return [template.format_map({"prompt": p, "response": r})
                for p, r in zip(prompts, responses, strict=True)], None

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> Any:
        first, second = self.texts(prompts, responses)
        # The chat template already holds the special tokens (BOS etc.); a pair or format string gets the
        # tokenizer's usual ones, as on the model card.
        special = self.spec.template != "chat"
        return self.tokenizer(first, second, padding=True, truncation=True, max_length=self.spec.max_length,
                              add_special_tokens=special, return_tensors="pt")

    # -- scores --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Raw scores `[B, len(objectives)]` (float32, CPU), in mini-batches of `batch_size`."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        rows = []
        size = self.spec.batch_size
        for start in range(0, len(prompts), size):
            enc = self.encode(prompts[start:start + size], responses[start:start + size]).to(self.device)
            with no_autocast(self.device):  # the spec's dtype, whatever autocast the caller runs under
                out = self.model(**enc)
            logits = getattr(out, self.spec.output_field, None)
            if logits is None:
                raise RewardModelError(f"reward model {self.spec.model!r}: its output has no field "
                                       f"{self.spec.output_field!r}; set output_field (e.g. 'logits')")
            logits = logits.float().reshape(logits.shape[0], -1)
            if self.spec.score == "probability":
                logits = logits.softmax(-1)
            rows.append(logits[:, self.indices].cpu())
        return torch.cat(rows) if rows else torch.zeros(0, len(self.objectives))


class HFVectorReward(ZScoredReward):
    """VectorReward from HF reward models: `[B, K]` in `names` order, z-scored by a frozen normaliser."""

    def __init__(self, models: Sequence[HFRewardModel], names: Sequence[str],
                 normalizer: RunningZScore | None = None) -> None:
        self.names = tuple(names)
        self.models = list(models)
        owner: dict[str, tuple[int, int]] = {}
        for m, model in enumerate(self.models):
            for j, objective in enumerate(model.objectives):
                if objective in owner:
                    raise ValueError(f"objective {objective!r} is scored by two reward models; score it once")
                owner[objective] = (m, j)
        missing = [n for n in self.names if n not in owner]
        if missing:
            raise ValueError(f"no reward model scores {missing}; add them to a reward_model.hf entry's objectives")
        self._columns = [owner[n] for n in self.names]
        if normalizer is not None and tuple(normalizer.names) != self.names:
            raise ValueError(f"normalizer names {tuple(normalizer.names)} != reward names {self.names}")
        self.normalizer = normalizer if normalizer is not None else RunningZScore(names=self.names)

    @classmethod
    def from_config(cls, cfg: Any, device: str | torch.device | None = None,
                    local_files_only: bool | None = None) -> HFVectorReward:
        """Every `reward_model.hf` entry of an experiment config, for its `objectives`, each in its spec's dtype.

        `device` defaults to the task's device (`resources.gpus_per_task`: its GPU, or the CPU), never to a GPU the
        task was not given.
        """
        if device is None:
            device = resolve_device(cfg.resources.gpus_per_task)
        models = [HFRewardModel(spec, device=device, local_files_only=local_files_only)
                  for spec in cfg.reward_model.hf]
        return cls(models, cfg.objectives)

    @torch.no_grad()
    def raw(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Unnormalised scores `[B, K]`: each model runs once on the batch."""
        per_model = [model.score(prompts, responses) for model in self.models]
        if not self._columns:
            return torch.zeros(len(prompts), 0)
        return torch.stack([per_model[m][:, j] for m, j in self._columns], dim=-1)


