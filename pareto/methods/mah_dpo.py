"""MAH-DPO (multi-action-head DPO; Shen et al., arXiv 2510.01167): one backbone, one head per objective.

Every preference pair is split into objective-tagged examples, one per objective that labels it; an example tagged
h is scored only by head h's DPO loss (its forward pass is routed to head h with a one-hot λ row), while the shared
backbone learns from all of them: L = Σ_h α_h mean_{B_h} L_h with α_h = 1/K. Batches are balanced across
objectives without discarding data: each objective draws its share of every batch from its own shuffled pool and
reshuffles when the pool is used up (the reference code truncates every objective to the smallest one).
With `mix_prob` q > 0, a share q of the batches instead draws λ from the simplex and routes every example through
the heads mixed by λ, trained on every objective's label with the per-weight loss at that λ (Σ_h λ_h L_h): the
paper's heads are trained apart and only mixed at inference, so an interior λ is a dilution of its vertices; these
batches teach the mixture itself (docs/fronts.md, "MAH-DPO: training the mix").
At inference the heads are mixed by λ (`MultiHeadPolicy`), without mutating the shared model: the shared head plus
each head's delta scaled by λ / Σλ (`head_mix: mean`, the paper's average of the heads' logits) or by λ / max λ
(`max`: the leading objective's delta whole; with `head_mix_power` p, (λ / max λ)^p).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from peft import LoraConfig

from pareto.config import DEFAULT_TARGETS, MAHDPOConfig
from pareto.front import sample_preferences
from pareto.methods import FitContext
from pareto.methods.dpo import PairSet, TrainResult, front_validator, train_dpo
from pareto.methods.panacea import validation_weights
from pareto.methods.reference import prepare_reference
from pareto.models.multihead import MultiHeadPolicy, add_multihead, head_weights, set_training_routing
from pareto.models.policy import lora_targets


class BalancedObjectiveSampler:
    """Objective-tagged examples in balanced batches: ⌈B/K⌉-ish per objective, every example used once per pass.

    Example (i, h) is pair i under objective h's label; pools hold the pairs that objective h labels (ties have no
    label). A batch takes `batch_size // K` examples per objective (the remainder to randomly chosen objectives,
    at least one each) from per-objective permutations that are reshuffled when exhausted.
    """

    def __init__(self, better: torch.Tensor, batch_size: int, rng: np.random.Generator) -> None:
        self.better, self.k = better, better.shape[1]
        self.pools = [np.flatnonzero(better[:, h].numpy() >= 0) for h in range(self.k)]
        self.active = [h for h in range(self.k) if len(self.pools[h])]
        if not self.active:
            raise ValueError("no objective has any preference label; MAH-DPO needs labelled pairs")
        self.batch_size = batch_size
        self._order = {h: rng.permutation(self.pools[h]) for h in self.active}
        self._pos = dict.fromkeys(self.active, 0)
        self.epochs = dict.fromkeys(self.active, 0)  # completed passes over each objective's pool

    def state_dict(self) -> dict:
        """Where each objective's pass stands (JSON): a resumed trainer continues the same data order."""
        return {str(h): {"order": self._order[h].tolist(), "pos": self._pos[h], "epochs": self.epochs[h]}
                for h in self.active}

    def load_state_dict(self, state: dict) -> None:
        for h in self.active:
            self._order[h] = np.asarray(state[str(h)]["order"], dtype=self._order[h].dtype)
            self._pos[h], self.epochs[h] = int(state[str(h)]["pos"]), int(state[str(h)]["epochs"])

    def _take(self, h: int, n: int, rng: np.random.Generator) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self._pos[h] >= len(self._order[h]):
                self._order[h], self._pos[h] = rng.permutation(self.pools[h]), 0
                self.epochs[h] += 1
            take = min(n - len(out), len(self._order[h]) - self._pos[h])
            out += self._order[h][self._pos[h]:self._pos[h] + take].tolist()
            self._pos[h] += take
        return out

    def counts(self, rng: np.random.Generator) -> dict[int, int]:
        per, extra = divmod(self.batch_size, len(self.active))
        counts = dict.fromkeys(self.active, max(per, 1))
        if per:
            for h in rng.choice(self.active, size=extra, replace=False):
                counts[int(h)] += 1
        return counts

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """(pair indices [B], labels [B, K] with only the tagged objective's label kept)."""
        idx, tags = [], []
        for h, n in self.counts(rng).items():
            picked = self._take(h, n, rng)
            idx += picked
            tags += [h] * len(picked)
        idx_arr, tag_arr = np.asarray(idx), torch.as_tensor(tags)
        better = torch.full((len(idx), self.k), -1, dtype=self.better.dtype)
        rows = torch.arange(len(idx))
        better[rows, tag_arr] = self.better[torch.as_tensor(idx_arr), tag_arr]
        return idx_arr, better


def routing(better: torch.Tensor) -> torch.Tensor:
    """One-hot λ rows that send each tagged example to its objective's head, for both responses of each pair."""
    onehot = (better >= 0).float()
    return torch.cat([onehot, onehot])  # pair_logps stacks response_0 rows, then response_1 rows


def fit(ctx: FitContext, cfg: MAHDPOConfig, weights: Sequence[float] | None = None
        ) -> tuple[MultiHeadPolicy, TrainResult]:
    """Train the shared backbone and the K heads (`weights` is unused: the model is conditioned)."""
    objectives, pairs, max_length = ctx.objectives, ctx.pairs, ctx.max_length
    k = len(objectives)
    base, tokenizer = ctx.load_base()
    backbone = (LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                           target_modules=lora_targets(base, cfg.target_modules, cfg.lora_layers),
                           lora_dropout=0.0, task_type="CAUSAL_LM") if cfg.target_modules else None)
    model = add_multihead(base, k, cfg.head_rank, cfg.head_alpha, backbone, cfg.head_layers,
                          cfg.target_modules or DEFAULT_TARGETS)
    uniform = np.full(k, 1.0 / k)
    # every delta is zero at init: at uniform head weights this is exactly the SFT reference
    prepare_reference(model, tokenizer, pairs, max_length, lambda: head_weights(uniform))
    policy = MultiHeadPolicy(model, tokenizer, objectives, cfg.head_mix, cfg.head_mix_power)
    validate = front_validator(lambda p, w: policy.generate(p, w, **ctx.gen), ctx.val_prompts,
                               validation_weights(k, cfg.val_edges), ctx.reward, cfg.max_repetition)
    sampler = BalancedObjectiveSampler(pairs.better, cfg.batch_size, np.random.default_rng(ctx.seed + 7))
    batch_lam = [uniform]  # the λ of the batch just drawn: the loss weighs its objectives by it

    def sample_batch(rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
        if cfg.mix_prob and rng.random() < cfg.mix_prob:  # no draw at 0: the tagged batches alone, as before
            batch_lam[0] = sample_preferences(rng, k, 1)[0]
            idx = rng.choice(len(pairs), size=min(cfg.batch_size, len(pairs)), replace=False)
            set_training_routing(np.tile(batch_lam[0], (2 * len(idx), 1)), cfg.head_mix, cfg.head_mix_power)
            return idx, pairs.better[idx]
        batch_lam[0] = uniform
        idx, better = sampler(rng)
        set_training_routing(routing(better))
        return idx, better

    with head_weights(uniform):  # the block's exit drops the training routing again
        result = train_dpo(
            model, tokenizer, pairs, cfg, objectives=objectives,
            # tagged batches: α_h = 1/K, the mean of the per-head DPO losses (every objective is in every batch);
            # mixed ones: Σ_h λ_h L_h, the per-weight loss at their λ
            sample_weights=lambda rng: batch_lam[0], apply_weights=lambda w: None, validate=validate,
            max_length=max_length, seed=ctx.seed, desc="mah-dpo", sample_batch=sample_batch,
            checkpoints=ctx.checkpoints(cfg), sampler_state=sampler,
        )
    result.history.append({"step": result.steps, **{f"passes/{objectives[h]}": float(n)
                                                    for h, n in sampler.epochs.items()}})
    return policy, result


def head_pair_logps(model, tokenizer, pairs: PairSet, index: Sequence[int], tags: Sequence[int], k: int,
                    max_length: int) -> torch.Tensor:
    """Log-probs [B, 2] of pairs `index`, each routed to its head `tags[i]` (for tests and diagnostics)."""
    from pareto.methods.dpo import pair_logps

    better = torch.full((len(index), k), -1)
    better[torch.arange(len(index)), torch.as_tensor(list(tags))] = 0
    with head_weights(routing(better)):
        logp, _, _ = pair_logps(model, tokenizer, [pairs.prompts[i] for i in index],
                                [pairs.responses[i] for i in index], max_length)
    return logp
