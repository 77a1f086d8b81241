"""Rewards-in-Context (Yang et al., ICML 2024) at inference: desired rewards written into the prompt.

Prompt format: the user prompt, then one `<objective> value` tag per objective with the z-scored reward rounded to
0.1 (RiC writes `<rm1_score> 1.3`; named tags cannot be mixed up between objectives, and the explicit sign
keeps every number the same width):

    "How do I bake bread? <helpful> +1.3 <harmless> -0.2 <concise> +0.5"

or, with `tags: values`, the numbers alone in the objectives' order, `"How do I bake bread? [+1.3 -0.2 +0.5]"`: the
names carry nothing the order does not, and a small tokenizer spells them letter by letter (the tiny LM's BPE
takes 38 tokens for the named tags of three objectives, more than half of a training sequence, and 17 for these).

A dialogue prompt (an HH-RLHF transcript ending in "\n\nAssistant:", as real datasets give them) gets its tags at the
end of the last Human turn, before the "\n\nAssistant:" that asks for the reply, as RiC writes them; appended after
it they would read as an Assistant turn of their own once the prompt becomes chat messages.

`parse_prompt` inverts `format_prompt` exactly (the tag block is removed with `removesuffix`; RiC's `rstrip` strips
a *character set* and eats into the prompt). A preference λ becomes desired rewards with the paper's closed-form
mapping over the reward range *observed* in the training data (the reference evaluation uses a N(0, 1) box), or
with the `front` mapping: the mean of the observed reward vectors that score best under λ, so the model is always
asked for a combination it has seen (the closed forms ask a vertex for the minimum of every other objective, a
combination that may never occur together: no response is both unhelpful and harmful on tiny-hh).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from peft import PeftModel

from pareto.data.chat import ASSISTANT, is_transcript
from pareto.models.conditioned import read_policy_meta, write_policy_meta
from pareto.models.policy import generate, load_policy

RIC_MARKER = "pareto.ric.v1"
MAPPINGS = ("linf", "l2", "linear", "front")
TAG_STYLES = ("named", "values")  # `<helpful> +1.3 <harmless> -0.2` or `[+1.3 -0.2]`
FRONT_TOP = 0.02  # the `front` mapping averages this top fraction of the observed vectors under λ


def format_value(value: float) -> str:
    """One decimal with an explicit sign: a fixed-width number ('+1.3', '-0.2', never '-0.0'), so every tag has
    the same token layout and a small model finds the digits at fixed offsets."""
    return f"{round(float(value), 1) + 0.0:+.1f}"


def reward_tags(objectives: Sequence[str], rewards: Sequence[float], style: str = "named") -> str:
    if len(objectives) != len(rewards):
        raise ValueError(f"{len(rewards)} rewards for {len(objectives)} objectives")
    if style == "values":
        return "[" + " ".join(format_value(r) for r in rewards) + "]"
    if style != "named":
        raise ValueError(f"unknown tag style {style!r}; choose one of {TAG_STYLES}")
    return " ".join(f"<{name}> {format_value(r)}" for name, r in zip(objectives, rewards, strict=True))


def _is_dialogue(prompt: str) -> bool:
    return is_transcript(prompt) and prompt.endswith(ASSISTANT)


def format_prompt(prompt: str, objectives: Sequence[str], rewards: Sequence[float], style: str = "named") -> str:
    """The prompt with its reward tags appended (the model is trained and queried on this text); a dialogue's tags
    close its last Human turn, before the final "\n\nAssistant:"."""
    tags = reward_tags(objectives, rewards, style)
    if _is_dialogue(prompt):
        return f"{prompt.removesuffix(ASSISTANT)} {tags}{ASSISTANT}"
    return f"{prompt} {tags}"


def parse_prompt(text: str, objectives: Sequence[str], style: str = "named") -> tuple[str, tuple[float, ...]]:
    """Split a conditioned prompt back into (prompt, rewards); ValueError if the tags are not there."""
    number = r"([+-]\d+\.\d)"
    if style == "values":
        tags = r" \[" + " ".join(number for _ in objectives) + r"\]"
    else:
        tags = r" " + " ".join(rf"<{re.escape(name)}> {number}" for name in objectives)
    dialogue = re.search(tags + re.escape(ASSISTANT) + r"$", text) if _is_dialogue(text) else None
    if dialogue is not None:
        suffix = text[dialogue.start():]
        return text.removesuffix(suffix) + ASSISTANT, tuple(float(v) for v in dialogue.groups())
    match = re.search(tags + r"$", text)
    if match is None:
        raise ValueError(f"no reward tags for {list(objectives)} at the end of {text!r}")
    suffix = text[match.start():]
    return text.removesuffix(suffix), tuple(float(v) for v in match.groups())


def preference_to_rewards(weights: Sequence[float] | np.ndarray, low: Sequence[float], high: Sequence[float],
                          mapping: str = "linf", observed: np.ndarray | None = None,
                          top: float = FRONT_TOP) -> np.ndarray:
    """Map λ ([K] or [B, K]) to desired rewards inside the observed range [low, high].

    linf (the paper's): the largest weight's objective asks for its maximum; every other objective i asks for
      low_i + min(K·λ_i, 1)·(high_i − low_i)  (it reaches the maximum once λ_i ≥ 1/K).
    l2:     low + λ/‖λ‖₂ · (high − low)   (the maximiser of λ·r over an ℓ2 ball; RiC's evaluation script)
    linear: low + λ · (high − low)
    front:  the mean of the `top` fraction (at least one) of the `observed` reward vectors [N, K] ranked by
      λ · (r − low)/(high − low); ties rank by order of appearance.
    """
    lam = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    k = lam.shape[1]
    if lo.shape != (k,) or hi.shape != (k,):
        raise ValueError(f"low/high need {k} values, got {lo.shape} and {hi.shape}")
    span = hi - lo
    if mapping == "front":
        if observed is None or len(observed) == 0:
            raise ValueError("mapping 'front' needs the observed reward vectors; this policy has none saved "
                             "(retrain it, or choose linf, l2 or linear)")
        obs = np.asarray(observed, dtype=np.float64).reshape(-1, k)
        scores = lam @ ((obs - lo) / np.where(span > 0, span, 1.0)).T  # [B, N]
        n_top = max(1, int(np.ceil(top * len(obs))))
        best = np.argsort(-scores, axis=1, kind="stable")[:, :n_top]
        out = obs[best].mean(axis=1)
        return out[0] if np.ndim(weights) == 1 else out
    if mapping == "linf":
        frac = np.minimum(k * lam, 1.0)
        frac[np.arange(len(lam)), lam.argmax(1)] = 1.0
    elif mapping == "l2":
        frac = lam / np.linalg.norm(lam, axis=1, keepdims=True)
    elif mapping == "linear":
        frac = lam
    else:
        raise ValueError(f"unknown mapping {mapping!r}; choose one of {MAPPINGS}")
    out = lo + frac * span
    return out[0] if np.ndim(weights) == 1 else out


class RiCPolicy:
    """One model for every λ: λ → desired rewards → reward tags in the prompt → generate."""

    kind = "ric"

    def __init__(self, model, tokenizer, objectives: Sequence[str], low: Sequence[float], high: Sequence[float],
                 mapping: str = "linf", normalizer: dict | None = None,
                 observed: np.ndarray | Sequence[Sequence[float]] | None = None, tags: str = "named") -> None:
        if mapping not in MAPPINGS:
            raise ValueError(f"unknown mapping {mapping!r}; choose one of {MAPPINGS}")
        if tags not in TAG_STYLES:
            raise ValueError(f"unknown tag style {tags!r}; choose one of {TAG_STYLES}")
        self.tags = tags  # how the rewards are written into the prompt (the style the model was trained on)
        self.model, self.tokenizer, self.objectives = model, tokenizer, tuple(objectives)
        self.low, self.high = [float(x) for x in low], [float(x) for x in high]
        self.mapping = mapping
        self.normalizer = normalizer or {}  # the z-score stats the tags are in (saved for reference)
        # the reward vectors the model was trained on (tag units), for the `front` mapping
        self.observed = None if observed is None else np.asarray(observed, dtype=np.float64)

    def desired_rewards(self, weights: np.ndarray) -> np.ndarray:
        return preference_to_rewards(weights, self.low, self.high, self.mapping, self.observed)

    def conditioned_prompts(self, prompts: Sequence[str], weights: np.ndarray) -> list[str]:
        weights = np.asarray(weights, dtype=np.float64)
        rows = np.tile(weights, (len(prompts), 1)) if weights.ndim == 1 else weights
        targets = self.desired_rewards(rows)
        return [format_prompt(p, self.objectives, t, self.tags) for p, t in zip(prompts, targets, strict=True)]

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        return generate(self.model, self.tokenizer, self.conditioned_prompts(prompts, weights), **gen)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path)  # a LoRA adapter, or the whole fine-tuned model (safetensors)
        if not isinstance(self.model, PeftModel):
            self.tokenizer.save_pretrained(path)
        write_policy_meta(path, RIC_MARKER, self.objectives, low=self.low, high=self.high, mapping=self.mapping,
                          normalizer=self.normalizer,
                          observed=None if self.observed is None else self.observed.tolist(),
                          tags=self.tags,
                          format=format_prompt("{prompt}", self.objectives, [0.0] * len(self.objectives), self.tags))

    @classmethod
    def load(cls, base_dir: str | Path, adapter_dir: str | Path, objectives: Sequence[str]) -> RiCPolicy:
        adapter_dir = Path(adapter_dir)
        meta = read_policy_meta(adapter_dir, RIC_MARKER, objectives, "RiC")
        if (adapter_dir / "adapter_config.json").is_file():  # a LoRA adapter on the base model
            base, tokenizer = load_policy(base_dir)
            model = PeftModel.from_pretrained(base, str(adapter_dir))
        else:  # fully fine-tuned: the directory is a whole model with its tokenizer
            model, tokenizer = load_policy(adapter_dir)
        model.eval()
        return cls(model, tokenizer, objectives, meta["low"], meta["high"], meta["mapping"], meta.get("normalizer"),
                   meta.get("observed"), meta.get("tags", "named"))
