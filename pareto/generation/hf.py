"""The default backend: transformers + PEFT in process, one base model, plain LoRA adapters loaded on demand.

Adapters are registered by name (a directory each, e.g. from `pareto export`), loaded with
`PeftModel.load_adapter` the first time they are asked for, and kept in a small LRU; a batch naming several
adapters runs as one `generate` call through PEFT's mixed-batch forward (`adapter_names=`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from peft import PeftModel

from pareto.generation.interface import AdapterArg, Completion, cut_at_eos, per_prompt_adapters
from pareto.models.policy import hf_repetition_penalty, load_policy, prompt_text

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class HFGenerator:
    """`generate(prompts, adapter)` on a transformers model with named PEFT LoRA adapters."""

    def __init__(self, base_model: str | Path, adapters: Mapping[str, str | Path] | None = None,
                 max_loaded: int = 8, dtype: str = "float32") -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be >= 1, got {max_loaded}")
        self.base_model = str(base_model)
        self.model, self.tokenizer = load_policy(base_model, dtype)
        self.paths: dict[str, Path] = {}
        for name, path in (adapters or {}).items():
            self.register(name, path)
        self.max_loaded = max_loaded
        self.peft: PeftModel | None = None
        self._loaded: OrderedDict[str, None] = OrderedDict()  # LRU order: oldest first

    @classmethod
    def from_export(cls, export_dir: str | Path, **kwargs: object) -> HFGenerator:
        """The base model and every adapter of a `pareto export` directory."""
        base, adapters = read_export(export_dir)
        return cls(base, adapters, **kwargs)  # type: ignore[arg-type]

    def register(self, name: str, path: str | Path) -> None:
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter {name!r}: {path} has no adapter_config.json (not a PEFT adapter)")
        if name == BASE:
            raise ValueError(f"{BASE!r} is reserved for the base model")
        self.paths[name] = path

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def _ensure(self, names: set[str]) -> None:
        """Load the adapters a batch needs; evict the least recently used others beyond `max_loaded`."""
        unknown = sorted(n for n in names if n not in self.paths)
        if unknown:
            raise KeyError(f"unknown adapter(s) {unknown}; registered: {sorted(self.paths)}")
        if len(names) > self.max_loaded:
            raise ValueError(f"one batch names {len(names)} adapters but max_loaded={self.max_loaded}; raise it")
        for name in sorted(names):
            if name in self._loaded:
                self._loaded.move_to_end(name)
                continue
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, str(self.paths[name]), adapter_name=name)
                self.peft.eval()
            else:
                self.peft.load_adapter(str(self.paths[name]), adapter_name=name)
            self._loaded[name] = None
            # evict after loading, so the model never runs out of adapters (PEFT needs an active one)
            while len(self._loaded) > self.max_loaded:
                victim = next(n for n in self._loaded if n not in names)
                self.peft.delete_adapter(victim)
                del self._loaded[victim]

    @property
    def eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        return sorted({i for i in [*ids, self.tokenizer.eos_token_id] if i is not None})

    @torch.no_grad()
    def complete(self, prompts: Sequence[str], adapter: AdapterArg = None, max_new_tokens: int = 48,
                 greedy: bool = True, temperature: float = 1.0, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> list[Completion]:
        """Answers with their token ids; one `generate` call for the whole batch, whatever the adapters."""
        names = per_prompt_adapters(adapter, len(prompts))
        if not prompts:
            return []
        needed = {n for n in names if n is not None}
        self._ensure(needed)
        if seed is not None:
            torch.manual_seed(seed)
        texts = [prompt_text(self.tokenizer, p) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = {"max_new_tokens": max_new_tokens, "do_sample": not greedy,
               "temperature": None if greedy else temperature, "top_p": None, "top_k": None,
               "repetition_penalty": hf_repetition_penalty(repetition_penalty),
               "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.eos_ids}
        if self.peft is None:  # nothing loaded yet: the plain base model
            out = self.model.generate(**enc, **gen)
        elif not needed:
            with self.peft.disable_adapter():
                out = self.peft.generate(**enc, **gen)
        elif len(set(names)) == 1:
            self.peft.set_adapter(names[0])
            out = self.peft.generate(**enc, **gen)
        else:  # a mixed batch: PEFT routes each row through its own adapter
            out = self.peft.generate(**enc, **gen, adapter_names=[n or BASE for n in names])
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        results = []
        for row, name in zip(new_tokens.tolist(), names, strict=True):
            ids = cut_at_eos(row, self.eos_ids)
            results.append(Completion(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), ids, name))
        return results

    def generate(self, prompts: Sequence[str], adapter: AdapterArg = None, max_new_tokens: int = 48,
                 greedy: bool = True, temperature: float = 1.0, seed: int | None = None,
                 repetition_penalty: float = 1.0) -> list[str]:
        return [c.text for c in self.complete(prompts, adapter, max_new_tokens, greedy, temperature, seed,
                                              repetition_penalty)]


def read_export(export_dir: str | Path) -> tuple[Path, dict[str, Path]]:
    """(base model dir, {adapter name: dir}) of a `pareto export` directory (its manifest.json)."""
    root = Path(export_dir)
    manifest_file = root / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{root} has no manifest.json; create it with `pareto export RUN --out {root}`")
    manifest = json.loads(manifest_file.read_text())
    return root / manifest["base_model"], {n: root / a["path"] for n, a in manifest["adapters"].items()}
