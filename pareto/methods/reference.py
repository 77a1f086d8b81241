"""π_ref for the DPO family: a pair set's reference log-probs (and frozen prefix), computed once per base model.

Every DPO-family trainer starts from the base model with a fresh adapter, and the reference is that base model
(adapter off, or at zero change). One per-weight model per λ therefore computes the very same reference again and
again: on SmolLM2-135M that pass costs as much as a third of each model's training. With a cache folder, the first
task writes what it computed under `<state>/cache/reference-<key>/` and the others read it. The key is everything
that makes the numbers: the frozen weights' bytes, the adapter's shape, the pairs' texts, the length budget, the
tokenizer's template, the device and autocast, pareto's source and the libraries' versions (`pareto.cache`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from pareto.cache import KEY_FILE, STAGE_VERSIONS, key_digest, library_versions, source_digest
from pareto.io import atomic_dir
from pareto.methods.dpo import PairSet, pair_logps
from pareto.models.device import model_device
from pareto.models.policy import pair_token_counts
from pareto.models.prefix import PREFIX_BUDGET_BYTES, FrozenPrefix, PrefixStates

STAGE = "reference"  # one of pareto.cache.STAGE_VERSIONS: `pareto cache list` shows its entries
VERSION = STAGE_VERSIONS[STAGE]


LOGITS_BUDGET = 2**28  # float32 logits per forward when the reference runs over a whole pair set (1 GiB)


@torch.no_grad()
def reference_logps(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: PairSet,
                    max_length: int, batch_size: int = 64, prefix: FrozenPrefix | None = None) -> torch.Tensor:
    """π_ref log-probs [N, 2] of every pair, computed once: the dataset is fixed, so the reference never reruns.

    Computed on the model's device and stored on the CPU (`train_dpo` moves each batch's rows to the model). With
    `prefix`, what enters its first trainable layer is kept too, in `pairs.prefix` (None where it would not fit
    `PREFIX_BUDGET_BYTES`).
    """
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1)
    # Cap the float32 logits of one forward (2·batch·length·vocab, and as much again for the log-softmax) at
    # LOGITS_BUDGET: a 49k vocabulary at 64 pairs of 192 tokens would need ~10 GiB; the tiny LM is far below.
    batch_size = max(1, min(batch_size, LOGITS_BUDGET // (2 * max_length * vocab)))
    out, rows, kept = [], [], 0
    for s in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", unit="batch", mininterval=5.0,
                  disable=len(pairs) <= batch_size):
        prompts, responses = pairs.prompts[s:s + batch_size], pairs.responses[s:s + batch_size]
        if prefix is None or kept > PREFIX_BUDGET_BYTES:
            logp, _, _ = pair_logps(model, tokenizer, prompts, responses, max_length)
        else:
            with prefix.capturing() as seen:
                logp, _, _ = pair_logps(model, tokenizer, prompts, responses, max_length)
            b, texts = len(prompts), [r[0] for r in responses] + [r[1] for r in responses]
            tokens = [min(n, max_length) for n in pair_token_counts(tokenizer, list(prompts) * 2, texts)]
            hidden = [seen[0][r, :tokens[r]].clone() for r in range(2 * b)]  # each row without its padding
            rows += [(hidden[i], hidden[b + i]) for i in range(b)]
            kept += sum(h.numel() * h.element_size() for h in hidden)
            if kept > PREFIX_BUDGET_BYTES:
                rows = []  # over the budget: none of it will be used, so none of it is held
        out.append(logp.cpu())
    if prefix is not None:
        pairs.prefix = PrefixStates(prefix.first, rows) if kept <= PREFIX_BUDGET_BYTES else None
    return torch.cat(out)


def prepare_reference(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: PairSet, max_length: int,
                      as_reference: Callable[[], AbstractContextManager], cache_root: Path | None = None) -> None:
    """Fill `pairs.ref_logp` from the model inside `as_reference()` (π_ref: e.g. PEFT's `model.disable_adapter`) and,
    where only its top layers train, `pairs.prefix` (`pareto.models.prefix`). With `cache_root` (the state folder's
    `cache/`), read them from a finished entry of the same key, or write one."""
    prefix = FrozenPrefix.of(model)  # before the block: PEFT's disable_adapter also clears requires_grad
    folder = None
    if cache_root is not None:
        key = reference_key(model, tokenizer, pairs, max_length, prefix)
        folder = Path(cache_root) / f"{STAGE}-{key_digest(key)}"
        if (folder / "DONE").is_file():
            _load(folder, pairs)
            return
    with as_reference():
        pairs.ref_logp = reference_logps(model, tokenizer, pairs, max_length, prefix=prefix)
    if folder is not None:
        _save(folder, pairs, key)


def reference_key(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: PairSet, max_length: int,
                  prefix: FrozenPrefix | None) -> dict:
    """What the reference numbers are made of, as JSON (written beside the entry)."""
    weights, texts = hashlib.sha256(), hashlib.sha256()
    for name, p in model.named_parameters():
        weights.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}\0".encode())
        if not p.requires_grad:  # the frozen base; trainable adapter weights only change what training starts from
            weights.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy())  # the buffer, no copy
    for prompt, (r0, r1) in zip(pairs.prompts, pairs.responses, strict=True):
        texts.update(json.dumps([prompt, r0, r1]).encode() + b"\0")
    device = model_device(model)
    return {"stage": STAGE, "stage_version": VERSION, "weights": weights.hexdigest()[:16],
            "pairs": texts.hexdigest()[:16], "n_pairs": len(pairs), "max_length": max_length,
            "chat_template": hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()[:16],
            "vocab": len(tokenizer), "device": device.type,
            "autocast": str(torch.get_autocast_dtype(device.type)) if torch.is_autocast_enabled(device.type) else None,
            "prefix_layer": None if prefix is None else prefix.first,
            "code": source_digest(), "libraries": library_versions()}


def _save(folder: Path, pairs: PairSet, key: dict) -> None:
    tensors = {"ref_logp": pairs.ref_logp.contiguous()}
    if pairs.prefix is not None:
        for i, (h0, h1) in enumerate(pairs.prefix.rows):
            tensors[f"prefix/{i}/0"], tensors[f"prefix/{i}/1"] = h0.contiguous(), h1.contiguous()
    meta = {"prefix_layer": "" if pairs.prefix is None else str(pairs.prefix.layer)}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / "reference.safetensors"), metadata=meta)
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=1, sort_keys=True), encoding="utf-8")
        (tmp / "DONE").write_text("", encoding="utf-8")


def _load(folder: Path, pairs: PairSet) -> None:
    from safetensors import safe_open

    path = folder / "reference.safetensors"
    with safe_open(str(path), framework="pt") as f:
        layer = (f.metadata() or {}).get("prefix_layer", "")
    tensors = load_file(str(path))
    pairs.ref_logp = tensors["ref_logp"]
    pairs.prefix = None if not layer else PrefixStates(
        int(layer), [(tensors[f"prefix/{i}/0"], tensors[f"prefix/{i}/1"]) for i in range(len(pairs))])
