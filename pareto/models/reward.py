"""A multi-head Bradley–Terry reward model on the frozen MiniLM sentence encoder.

One frozen encoder embeds each (prompt, response) once; a small shared MLP and K linear heads turn the
embedding into K scores, one per objective. Each head is trained with the Bradley–Terry loss on its own
objective's preference labels (ties masked), so a single batched encoder pass scores all K objectives.
The encoder and the inputs it builds live in `pareto.models.encoder` (re-exported here).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from pareto.io import read_safetensors
from pareto.models.device import no_autocast
from pareto.models.encoder import (
    EMBED_DIM,
    EMBEDDINGS_FILE,
    MINILM_ID,
    TextEncoder,
    length_features,
    minilm_path,
    pair_text,
    reward_inputs,
)
from pareto.objectives.base import RunningZScore, ZScoredReward
from pareto.objectives.losses import masked_objective_means, tie_nll

__all__ = ["EMBED_DIM", "MINILM_ID", "LearnedVectorReward", "MultiHeadRewardModel", "RewardTrainResult", "TextEncoder",
           "bradley_terry_loss", "length_features", "minilm_path", "pair_text", "reward_inputs", "train_reward_model"]

_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Model and loss
# --------------------------------------------------------------------------------------------------


class MultiHeadRewardModel(nn.Module):
    """Inputs `[N, in_dim]` -> scores `[N, K]`: a shared GELU MLP trunk and K separate linear heads.

    The input is the pair embedding (`embed_dim`), followed by the response's length feature when
    `length_feature` (see `reward_inputs`). Separate `nn.Linear` heads (rather than one
    `Linear(hidden, K)`) keep each objective's output layer its own parameter, so one objective's
    gradient never touches another's head.
    """

    def __init__(
        self,
        n_heads: int,
        embed_dim: int = EMBED_DIM,
        hidden: Sequence[int] = (256,),
        length_feature: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_heads < 1:
            raise ValueError("n_heads must be >= 1")
        self.n_heads = n_heads
        self.embed_dim = embed_dim
        self.length_feature = length_feature
        self.in_dim = embed_dim + int(length_feature)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = dropout
        layers: list[nn.Module] = []
        width = self.in_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.trunk = nn.Sequential(*layers)  # empty trunk = linear heads directly on the embedding
        self.heads = nn.ModuleList([nn.Linear(width, 1) for _ in range(n_heads)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.trunk(x)
        return torch.cat([head(z) for head in self.heads], dim=-1)

    def config(self) -> dict[str, Any]:
        return {"n_heads": self.n_heads, "embed_dim": self.embed_dim, "hidden": list(self.hidden),
                "length_feature": self.length_feature, "dropout": self.dropout}


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, mask: torch.Tensor,
                       ties: torch.Tensor | None = None, tie_weight: float = 0.0) -> torch.Tensor:
    """Per-objective Bradley–Terry loss `[K]` from scores `[P, K]` and a labelled-pair mask `[P, K]`.

    loss_k = mean over pairs labelled for k of -log σ(r_chosen - r_rejected); unlabelled (tie) entries
    contribute nothing, and an objective with no labelled pair gets loss 0.

    With tie_weight > 0 and a tie mask `[P, K]`, loss_k also gets tie_weight × the mean over pairs tied on k of
    the cross-entropy to a 50/50 preference, -½ log σ(Δ) - ½ log σ(-Δ) - log 2 (0 at Δ = 0). Without it a head
    never sees the pairs it should be indifferent on (harmlessness on safe prompts) and may score them
    arbitrarily, which a policy optimised against it then exploits.
    """
    mask = mask.to(r_chosen.dtype)
    delta = r_chosen - r_rejected
    nll = F.softplus(-delta)  # == -log σ(Δ), numerically stable
    loss = masked_objective_means(nll, mask)
    if tie_weight > 0 and ties is not None:
        loss = loss + tie_weight * masked_objective_means(tie_nll(delta), ties.to(delta.dtype))
    return loss


class _PairLike(Protocol):
    prompt: str
    response_0: str
    response_1: str
    better: tuple[int, ...]


@dataclass
class RewardTrainResult:
    model: MultiHeadRewardModel
    accuracy: dict[str, float]  # held-out pairwise accuracy per objective (ties skipped; nan if none)
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1


def _encode_pairs(
    encoder: TextEncoder, pairs: Sequence[_PairLike], n_obj: int, length_feature: bool, progress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (inputs_0 [P, D], inputs_1 [P, D], labels [P, K] in {-1, 0, 1}); each unique text encoded once."""
    for i, p in enumerate(pairs):
        if len(p.better) != n_obj:
            raise ValueError(f"pair {i} has {len(p.better)} labels, expected {n_obj} (one per objective)")
        if any(b not in (-1, 0, 1) for b in p.better):
            raise ValueError(f"pair {i} has labels {p.better}; each must be 0, 1 or -1 (tie)")
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.response_0 for p in pairs] + [p.response_1 for p in pairs]
    # One call for both sides: the encoder dedups and caches across them.
    emb = reward_inputs(encoder, prompts, responses, length_feature, progress)
    labels = torch.tensor([list(p.better) for p in pairs], dtype=torch.long).reshape(len(pairs), n_obj)
    return emb[: len(pairs)], emb[len(pairs) :], labels


def _chosen_rejected(
    model: nn.Module, e0: torch.Tensor, e1: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r0, r1 = model(e0), model(e1)
    pick1 = labels == 1
    return torch.where(pick1, r1, r0), torch.where(pick1, r0, r1), labels >= 0


@torch.no_grad()
def _evaluate(
    model: nn.Module, e0: torch.Tensor, e1: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (accuracy [K] (nan where no labelled pair), loss [K])."""
    model.eval()
    chosen, rejected, mask = _chosen_rejected(model, e0, e1, labels)
    correct = ((chosen > rejected) & mask).sum(0).double()
    n = mask.sum(0).double()
    acc = torch.where(n > 0, correct / n.clamp(min=1), torch.full_like(n, math.nan))
    return acc, bradley_terry_loss(chosen, rejected, mask)


def train_reward_model(
    encoder: TextEncoder,
    names: tuple[str, ...],
    train_pairs: Sequence[_PairLike],
    val_pairs: Sequence[_PairLike],
    epochs: int = 60,
    lr: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 1e-2,
    batch_size: int = 128,
    hidden: Sequence[int] = (256,),
    length_feature: bool = True,
    dropout: float = 0.0,
    patience: int | None = 15,
    progress: bool = False,
    tie_weight: float = 0.0,
    device: str | torch.device | None = None,
) -> RewardTrainResult:
    """Fit K Bradley–Terry heads on frozen embeddings; keep the epoch with the best mean val accuracy.

    The encoder is frozen, so all texts are embedded once up front and training is a few seconds of
    AdamW on `[P, 384 (+1)]` tensors. Deterministic given `seed` (init, shuffling and dropout).
    tie_weight > 0 also fits tied pairs (label -1) to equal scores (see `bradley_terry_loss`); only where -1
    means a real tie, not a missing label. The heads train on `device` (default: the encoder's) and stay there.
    """
    names = tuple(names)
    if not train_pairs:
        raise ValueError("train_pairs is empty")
    k = len(names)
    e0, e1, y = _encode_pairs(encoder, train_pairs, k, length_feature, progress)
    if val_pairs:
        v0, v1, vy = _encode_pairs(encoder, val_pairs, k, length_feature, progress)
    else:  # no held-out set: select on the training pairs (reported accuracy is then optimistic)
        v0, v1, vy = e0, e1, y

    device = torch.device(device if device is not None else getattr(encoder, "device", "cpu"))
    e0, e1, y, v0, v1, vy = (t.to(device) for t in (e0, e1, y, v0, v1, vy))
    # Seed init, shuffling and dropout from `seed` without disturbing the caller's global RNG (the GPU's too); fp32
    # whatever autocast the caller runs under.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), no_autocast(device):
        torch.manual_seed(seed)
        model = MultiHeadRewardModel(k, embed_dim=encoder.dim, hidden=hidden, length_feature=length_feature,
                                     dropout=dropout).to(device)  # initialised on the CPU: same weights anywhere
        history, best_epoch = _fit(model, names, (e0, e1, y), (v0, v1, vy), epochs, lr, weight_decay,
                                   batch_size, patience, seed, tie_weight)
    with no_autocast(device):
        acc, _ = _evaluate(model, v0, v1, vy)
    return RewardTrainResult(model=model, accuracy={nm: float(a) for nm, a in zip(names, acc, strict=True)},
                             history=history, best_epoch=best_epoch)


def _fit(
    model: MultiHeadRewardModel,
    names: tuple[str, ...],
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    patience: int | None,
    seed: int,
    tie_weight: float = 0.0,
) -> tuple[list[dict[str, float]], int]:
    """AdamW mini-batch loop; leaves `model` holding its best-validation state. -> (history, best epoch)."""
    (e0, e1, y), (v0, v1, vy), k = train, val, len(names)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    history: list[dict[str, float]] = []
    best_key: tuple[float, float] | None = None
    best_state, best_epoch, since_best = copy.deepcopy(model.state_dict()), -1, 0
    n, device = e0.shape[0], e0.device
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen).to(device)  # drawn on the CPU: the same order on every device
        total, seen = torch.zeros(k, device=device), 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            chosen, rejected, mask = _chosen_rejected(model, e0[idx], e1[idx], y[idx])
            per_obj = bradley_terry_loss(chosen, rejected, mask, y[idx] < 0, tie_weight)
            loss = per_obj.mean()  # objectives weigh equally whatever their label counts
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += per_obj.detach() * len(idx)
            seen += len(idx)
        acc, vloss = _evaluate(model, v0, v1, vy)
        acc_mean = float(torch.nanmean(acc)) if not torch.isnan(acc).all() else math.nan
        row: dict[str, float] = {"epoch": float(epoch), "train_loss": float((total / seen).mean()),
                                 "val_loss": float(vloss.mean()), "val_acc_mean": acc_mean}
        for j, name in enumerate(names):
            row[f"train_loss/{name}"] = float(total[j] / seen)
            row[f"val_acc/{name}"] = float(acc[j])
        history.append(row)
        # Best = highest mean accuracy; lower val loss breaks ties (accuracy saturates on easy data).
        key = (acc_mean if not math.isnan(acc_mean) else -math.inf, -float(vloss.mean()))
        if best_key is None or key > best_key:
            best_key, best_state, best_epoch, since_best = key, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            since_best += 1
            if patience is not None and since_best >= patience:
                break

    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


# --------------------------------------------------------------------------------------------------
# The VectorReward
# --------------------------------------------------------------------------------------------------


class LearnedVectorReward(ZScoredReward):
    """VectorReward from a trained multi-head model: `[B, K]` float32 from one batched encoder pass."""

    def __init__(
        self,
        encoder: TextEncoder,
        model: MultiHeadRewardModel,
        names: Sequence[str],
        normalizer: RunningZScore | None = None,
    ) -> None:
        self.names = tuple(names)
        if model.n_heads != len(self.names):
            raise ValueError(f"model has {model.n_heads} heads but {len(self.names)} names: {self.names}")
        if normalizer is not None and tuple(normalizer.names) != self.names:
            raise ValueError(f"normalizer names {tuple(normalizer.names)} != reward names {self.names}")
        self.encoder = encoder
        self.model = model.eval()
        # An unfitted RunningZScore is the identity (mean 0, std 1) until fit_normalizer is called.
        self.normalizer = normalizer if normalizer is not None else RunningZScore(names=self.names)

    @torch.no_grad()
    def raw(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Unnormalised head outputs `[B, K]` (float32, on CPU whatever device the heads live on)."""
        x = reward_inputs(self.encoder, prompts, responses, self.model.length_feature)
        self.model.eval()
        device = next(self.model.parameters()).device
        with no_autocast(device):
            return self.model(x.to(device)).float().cpu()



    # -- persistence: safetensors for the weights, JSON for everything else (never pickle) ----------

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / "heads.safetensors"))
        meta = {
            "format_version": _FORMAT_VERSION,
            "names": list(self.names),
            "encoder": getattr(self.encoder, "model_id", MINILM_ID),
            "encoder_max_length": getattr(self.encoder, "max_length", None),
            "model": self.model.config(),
            "normalizer": self.normalizer.state_dict(),
        }
        (path / "meta.json").write_text(json.dumps(meta, indent=2))
        if isinstance(self.encoder, TextEncoder):
            self.encoder.save_embeddings(path / EMBEDDINGS_FILE)
        return path

    @classmethod
    def load(
        cls, path: str | Path, encoder: TextEncoder | None = None, names: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> LearnedVectorReward:
        """Load a saved reward; `names`, when given, must equal the saved objective names."""
        path = Path(path)
        meta_file, weights_file = path / "meta.json", path / "heads.safetensors"
        if not meta_file.is_file() or not weights_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved reward (needs meta.json, heads.safetensors)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
        saved_names = tuple(meta["names"])
        if names is not None and tuple(names) != saved_names:
            raise ValueError(f"{path}: saved objectives {saved_names} != requested {tuple(names)}")
        cfg = meta["model"]
        if int(cfg["n_heads"]) != len(saved_names):
            raise ValueError(f"{path}: meta lists {len(saved_names)} names but {cfg['n_heads']} heads")
        norm_state = meta.get("normalizer")
        if norm_state is not None and tuple(norm_state["names"]) != saved_names:
            raise ValueError(f"{path}: normalizer names {tuple(norm_state['names'])} != {saved_names}")

        model = MultiHeadRewardModel(
            int(cfg["n_heads"]),
            embed_dim=int(cfg["embed_dim"]),
            hidden=cfg["hidden"],
            length_feature=bool(cfg["length_feature"]),
            dropout=float(cfg.get("dropout", 0.0)),
        )
        state = read_safetensors(weights_file)  # one-line CheckpointError: truncated, pickle, corrupt
        expected = model.state_dict()
        if set(state) != set(expected):
            raise ValueError(f"{path}: weight names {sorted(state)} != expected {sorted(expected)}")
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(expected[key].shape)}")
        model.load_state_dict(state)

        if encoder is None:  # same truncation as at training time, else the scores drift
            encoder = TextEncoder(max_length=int(meta.get("encoder_max_length") or 128), device=device)
        enc_id = getattr(encoder, "model_id", MINILM_ID)
        if meta.get("encoder") != enc_id:
            raise ValueError(f"{path}: trained on encoder {meta.get('encoder')!r}, given {enc_id!r}")
        if getattr(encoder, "dim", model.embed_dim) != model.embed_dim:
            raise ValueError(f"{path}: heads want {model.embed_dim}-d embeddings, encoder has {encoder.dim}")
        if isinstance(encoder, TextEncoder):
            encoder.load_embeddings(path / EMBEDDINGS_FILE)
        normalizer = RunningZScore.from_state_dict(norm_state) if norm_state is not None else None
        model.to(getattr(encoder, "device", "cpu"))  # the heads score where the encoder runs
        return cls(encoder, model, saved_names, normalizer)
