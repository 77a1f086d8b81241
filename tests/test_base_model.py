"""The base policy: a local path (or hub id) instead of the embedded tiny LM, optional SFT, and the cache."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from pareto.config import TinyModelConfig, config_from_dict
from pareto.distributed import stages
from pareto.distributed.bundle import pack, unpack
from pareto.distributed.recorder import cached, store
from pareto.models.policy import build_tiny_model, load_policy, save_model, train_tokenizer


def _local_model(path: Path) -> Path:
    tok = train_tokenizer(["User: how do i bake bread?\nAssistant: mix flour, water and yeast."] * 4, 300)
    model = build_tiny_model(TinyModelConfig(hidden_size=64, intermediate_size=64, num_heads=1, vocab_size=300),
                             tok, seed=0)
    save_model(model, tok, path)
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_a_local_path_is_loaded_as_is_without_sft(tmp_path: Path) -> None:
    src = _local_model(tmp_path / "local-model")
    cfg = config_from_dict({"model": {"base": str(src), "sft": "never"}})
    out = stages.sft_stage(cfg)
    got = _weights(unpack(out["bundle"], tmp_path / "got"))
    want = _weights(src)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert out["losses"] == []
    model, tokenizer = load_policy(tmp_path / "got")
    assert tokenizer.padding_side == "left" and model.config.hidden_size == 64


def test_sft_always_trains_a_local_model_on_the_task(tmp_path: Path) -> None:
    src = _local_model(tmp_path / "local-model")
    cfg = config_from_dict({"model": {"base": str(src), "sft": "always", "tiny": {"sft_epochs": 1}}})
    out = stages.sft_stage(cfg)
    assert out["losses"][-1] < out["losses"][0]
    got = _weights(unpack(out["bundle"], tmp_path / "got"))
    assert any(not torch.equal(got[k], v) for k, v in _weights(src).items())


def test_cache_entries_count_only_when_complete(tmp_path: Path) -> None:
    entry = tmp_path / "cache" / "base-abc"
    assert cached(entry) is None
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(b"half-written")  # a killed run leaves no DONE marker
    assert cached(entry) is None
    store(entry, {"model.safetensors": b"weights", "config.json": b"{}"})
    assert cached(entry) == entry
    assert pack(entry) == {"DONE": b"ok", "config.json": b"{}", "model.safetensors": b"weights"}
