"""Panacea SVD-LoRA on a tiny LlamaForCausalLM: exactness at init, λ handling, export, save/load, training."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from pareto.models import svd_lora
from pareto.models.svd_lora import (
    PANACEA_MARKER,
    PanaceaLinear,
    PanaceaLoadError,
    add_panacea_adapter,
    export_lora,
    load_panacea,
    panacea_layers,
    panacea_lora_config,
    save_panacea,
    set_preference,
    verify_panacea_model,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
K, RANK, ALPHA = 3, 4, 8  # r = 7, padded to 8 on export
N_LAYERS = 2 * len(TARGETS)
TOL = 1e-5


@pytest.fixture(scope="module")
def base_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def fresh_base(base_model):
    """An independent copy: get_peft_model and from_pretrained modify the base model in place."""
    return lambda: copy.deepcopy(base_model)


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    return torch.randint(3, 128, (3, 10), generator=torch.Generator().manual_seed(1))


def make_panacea(base, dropout: float = 0.0) -> PeftModel:
    return add_panacea_adapter(base, panacea_lora_config(K, RANK, ALPHA, TARGETS, dropout=dropout)).eval()


def simulate_training(model: PeftModel, seed: int = 0) -> None:
    """Give σ and s non-zero values, as training would, so that λ matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in panacea_layers(model):
            layer.lora_sigma["default"].copy_(torch.randn(RANK, generator=gen))
            layer.lora_pref_scale["default"].copy_(3.0 * torch.randn(1, generator=gen))


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- (1) a fresh adapter is exactly the base model ---------------------------------------------------------
def test_fresh_adapter_is_exactly_the_base_model(fresh_base, input_ids):
    base = fresh_base()
    expected = logits(base, input_ids)
    model = make_panacea(base)
    assert len(panacea_layers(model)) == N_LAYERS
    assert torch.equal(logits(model, input_ids), expected)  # σ = s = 0: the delta is exactly zero
    set_preference(model, [0.0, 0.0, 1.0])
    assert torch.equal(logits(model, input_ids), expected)


# ---- (2) λ steers the model, and is never a parameter ------------------------------------------------------
def test_preference_changes_output_and_is_not_a_parameter(fresh_base, input_ids):
    base = fresh_base()
    base_logits = logits(base, input_ids)
    model = make_panacea(base)
    simulate_training(model)

    outs = []
    for lam in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]):
        set_preference(model, lam)
        outs.append(logits(model, input_ids))
    assert max_diff(outs[0], outs[1]) > 1e-3
    assert max_diff(outs[1], outs[2]) > 1e-3
    assert max_diff(outs[0], base_logits) > 1e-3
    with model.disable_adapter():  # the DPO reference pass relies on this
        assert torch.equal(logits(model, input_ids), base_logits)

    # λ is a non-persistent buffer: no parameter, no gradient, not saved
    params = dict(model.named_parameters())
    assert not any("lora_pref." in name for name in params)
    for layer in panacea_layers(model):
        assert not layer.lora_pref["default"].requires_grad
    assert not any("lora_pref." in key for key in model.state_dict())

    trainable = [name for name, p in params.items() if p.requires_grad]
    kinds = {"lora_A": 0, "lora_B": 0, "lora_sigma": 0, "lora_pref_scale": 0}
    for name in trainable:
        kind = next((k for k in kinds if f".{k}." in name), None)
        assert kind is not None, f"unexpected trainable parameter {name}"
        kinds[kind] += 1
    assert kinds == dict.fromkeys(kinds, N_LAYERS)
    layer = panacea_layers(model)[0]
    assert layer.lora_sigma["default"].shape == (RANK,)
    assert layer.lora_pref_scale["default"].shape == (1,)  # one s per layer
    assert layer.lora_A["default"].weight.shape == (RANK + K, layer.in_features)


# ---- (3) one λ per batch row -------------------------------------------------------------------------------
ROW_PREFS = np.array([[1.0, 0.0, 0.0], [0.1, 0.6, 0.3], [0.0, 0.0, 1.0]])


def test_per_row_preference_matches_rows_run_separately(fresh_base, input_ids):
    model = make_panacea(fresh_base())
    simulate_training(model)
    set_preference(model, ROW_PREFS)
    batched = logits(model, input_ids)
    for i, lam in enumerate(ROW_PREFS):
        set_preference(model, lam)
        assert max_diff(batched[i], logits(model, input_ids[i : i + 1])[0]) <= TOL

    set_preference(model, ROW_PREFS[:2])  # the row count must match the batch
    with pytest.raises(ValueError, match="per-row preference has 2 rows"):
        logits(model, input_ids)


def test_per_row_preference_in_generate_with_kv_cache(fresh_base, input_ids):
    model = make_panacea(fresh_base())
    simulate_training(model)
    gen = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    set_preference(model, ROW_PREFS)
    with torch.no_grad():
        batched = model.generate(input_ids=input_ids, **gen)
        for i, lam in enumerate(ROW_PREFS):
            set_preference(model, lam)
            assert torch.equal(batched[i], model.generate(input_ids=input_ids[i : i + 1], **gen)[0])


# ---- (4) export to a plain LoRA adapter --------------------------------------------------------------------
@pytest.mark.parametrize("lam", [[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.5, 0.5]])
def test_export_equals_panacea_at_lambda(fresh_base, input_ids, tmp_path, lam):
    model = make_panacea(fresh_base())
    simulate_training(model, seed=3)
    export_lora(model, lam, tmp_path)
    set_preference(model, lam)
    expected = logits(model, input_ids)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a plain adapter loads without "unexpected key" noise
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        plain = PeftModel.from_pretrained(fresh_base(), tmp_path).eval()
    assert not panacea_layers(plain)
    assert max_diff(logits(plain, input_ids), expected) <= TOL

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 8  # r = 7 padded to the next vLLM rank
    assert config["lora_alpha"] / config["r"] == pytest.approx(ALPHA / (RANK + K), rel=1e-12)
    assert "panacea_n_objectives" not in config
    assert sorted(config["target_modules"]) == sorted(TARGETS)
    assert not list(tmp_path.glob("*.bin"))  # safetensors only
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in tensors)
    assert len(tensors) == 2 * N_LAYERS
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["exported_from"] == PANACEA_MARKER
    assert meta["weights"] == pytest.approx(lam)


def test_export_without_padding_keeps_rank_and_alpha(fresh_base, input_ids, tmp_path):
    model = make_panacea(fresh_base())
    simulate_training(model, seed=4)
    lam = [0.6, 0.4, 0.0]
    export_lora(model, lam, tmp_path, pad_to_vllm_rank=False)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (RANK + K, ALPHA)
    set_preference(model, lam)
    plain = PeftModel.from_pretrained(fresh_base(), tmp_path).eval()
    assert max_diff(logits(plain, input_ids), logits(model, input_ids)) <= TOL

    with pytest.raises(ValueError, match="one preference vector"):
        export_lora(model, ROW_PREFS, tmp_path / "rows")


# ---- (5) save / load, and the silent plain-LoRA pitfall ----------------------------------------------------
@pytest.fixture
def saved_panacea(fresh_base, input_ids, tmp_path) -> tuple[Path, torch.Tensor]:
    """A trained-looking Panacea adapter on disk, and its logits at λ = (0.1, 0.2, 0.7)."""
    model = make_panacea(fresh_base())
    simulate_training(model, seed=5)
    set_preference(model, [0.1, 0.2, 0.7])
    save_panacea(model, tmp_path / "panacea")
    return tmp_path / "panacea", logits(model, input_ids)


def test_save_load_round_trip_is_exact(fresh_base, input_ids, saved_panacea):
    path, expected = saved_panacea
    meta = json.loads((path / "meta.json").read_text())
    assert meta["marker"] == PANACEA_MARKER
    assert (meta["n_objectives"], meta["rank"]) == (K, RANK)
    assert not list(path.glob("*.bin"))

    loaded = load_panacea(fresh_base(), path)
    assert len(panacea_layers(loaded)) == N_LAYERS
    set_preference(loaded, [0.1, 0.2, 0.7])  # λ is an input: it is not saved
    assert torch.equal(logits(loaded, input_ids), expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference by default

    trainable = load_panacea(fresh_base(), path, is_trainable=True)  # resume training
    assert sum(p.requires_grad for p in trainable.parameters()) == 4 * N_LAYERS


def test_plain_from_pretrained_silently_drops_sigma_and_scale(fresh_base, input_ids, saved_panacea):
    """Documents the PEFT pitfall: without re-registration, loading "works" and gives the wrong model."""
    path, expected = saved_panacea
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT only warns about an unknown config key
        plain = PeftModel.from_pretrained(fresh_base(), path).eval()
    assert not panacea_layers(plain)
    assert max_diff(logits(plain, input_ids), expected) > 1e-3
    with pytest.raises(PanaceaLoadError, match="plain LoRA"):
        verify_panacea_model(plain, path)


def test_load_panacea_requires_the_marker(fresh_base, saved_panacea):
    path, _ = saved_panacea
    (path / "meta.json").unlink()
    with pytest.raises(PanaceaLoadError, match="marker"):
        load_panacea(fresh_base(), path)
    (path / "meta.json").write_text(json.dumps({"marker": "something.else"}))
    with pytest.raises(PanaceaLoadError, match="marker"):
        load_panacea(fresh_base(), path)


def test_load_panacea_rejects_layers_that_came_back_plain(fresh_base, saved_panacea, monkeypatch):
    path, _ = saved_panacea
    from peft import LoraConfig

    # simulate a forgotten registration: the config no longer maps nn.Linear to PanaceaLinear
    monkeypatch.setattr(svd_lora, "_config_from_dir", lambda p, meta: LoraConfig.from_pretrained(str(p)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(PanaceaLoadError, match="plain LoRA"):
            load_panacea(fresh_base(), path)


def test_load_panacea_rejects_missing_sigma_tensors(fresh_base, saved_panacea):
    path, _ = saved_panacea
    file = path / "adapter_model.safetensors"
    tensors = load_file(str(file))
    from safetensors.torch import save_file

    save_file({k: v for k, v in tensors.items() if not k.endswith(".lora_sigma")}, str(file))
    # PEFT only warns about the missing keys; load_panacea turns that into an error
    with pytest.raises(PanaceaLoadError, match="sigma"), pytest.warns(UserWarning, match="missing adapter"):
        load_panacea(fresh_base(), path)


def test_non_linear_targets_are_rejected(fresh_base):
    with pytest.raises(ValueError, match="not nn.Linear"):
        add_panacea_adapter(fresh_base(), panacea_lora_config(K, RANK, ALPHA, ["q_proj", "embed_tokens"]))


# ---- (6) training: gradient flow from the zero init --------------------------------------------------------
def _grads(model: PeftModel, kind: str) -> list[torch.Tensor]:
    return [p.grad for n, p in model.named_parameters() if f".{kind}." in n]


def test_training_step_gradients(fresh_base, input_ids):
    torch.manual_seed(0)
    model = make_panacea(fresh_base()).train()
    set_preference(model, [0.3, 0.3, 0.4])
    target = torch.randint(0, 128, input_ids.shape, generator=torch.Generator().manual_seed(7))
    model(input_ids, labels=target).loss.backward()

    # σ = s = 0: only σ and s get gradient at first; A and B get exactly zero
    for kind in ("lora_sigma", "lora_pref_scale"):
        grads = _grads(model, kind)
        assert len(grads) == N_LAYERS and all(g is not None for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0
    for kind in ("lora_A", "lora_B"):
        assert all(g is not None and torch.count_nonzero(g) == 0 for g in _grads(model, kind))
    for layer in panacea_layers(model):
        assert layer.lora_pref["default"].grad is None

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        set_preference(model, np.random.default_rng(step).dirichlet(np.ones(K)))
        model(input_ids, labels=target).loss.backward()
        optimizer.step()
    for kind in ("lora_A", "lora_B"):
        assert all(torch.count_nonzero(g) > 0 for g in _grads(model, kind))


def test_dropout_trains_and_is_off_in_eval(fresh_base, input_ids):
    model = make_panacea(fresh_base(), dropout=0.1)
    simulate_training(model)
    model.eval()
    assert torch.equal(logits(model, input_ids), logits(model, input_ids))
    model.train()  # dropout acts on the adapter input only, as in LoRA
    assert max_diff(logits(model, input_ids), logits(model, input_ids)) > 0
    target = torch.randint(0, 128, input_ids.shape, generator=torch.Generator().manual_seed(8))
    loss = model(input_ids, labels=target).loss
    loss.backward()
    assert torch.isfinite(loss)


# ---- (7) bad λ ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        ([0.5, 0.5], "expected length 3"),
        ([[0.5, 0.5]], "expected length 3"),
        (np.ones((2, 2, 3)) / 3, "expected length 3"),
        ([1.2, -0.2, 0.0], "non-negative"),
        ([float("nan"), 0.5, 0.5], "finite"),
        ([float("inf"), 0.0, 0.0], "finite"),
        ([0.2, 0.2, 0.2], "sum to 1"),
        ([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]], "sum to 1"),
        (["a", "b", "c"], "numeric"),
    ],
)
def test_bad_preference_raises(fresh_base, weights, problem):
    model = make_panacea(fresh_base())
    with pytest.raises(ValueError, match=problem):
        set_preference(model, weights)


def test_preference_input_types(fresh_base, input_ids):
    model = make_panacea(fresh_base())
    simulate_training(model)
    outs = []
    for weights in ([0.2, 0.3, 0.5], np.array([0.2, 0.3, 0.5]), torch.tensor([0.2, 0.3, 0.5])):
        set_preference(model, weights)
        outs.append(logits(model, input_ids))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# ---- merge policy: merged layers hold one λ; changing it needs unmerge → set → merge -----------------------
def test_merge_unmerge_and_preference_changes(fresh_base, input_ids):
    base = fresh_base()
    base_logits = logits(base, input_ids)
    model = make_panacea(base)
    simulate_training(model)
    lam1, lam2 = [0.7, 0.2, 0.1], [0.0, 0.1, 0.9]
    set_preference(model, lam2)
    unmerged2 = logits(model, input_ids)
    set_preference(model, lam1)
    unmerged1 = logits(model, input_ids)

    model.merge_adapter()
    assert all(layer.merged for layer in panacea_layers(model))
    assert max_diff(logits(model, input_ids), unmerged1) <= TOL
    with pytest.raises(RuntimeError, match="merged"):
        set_preference(model, lam2)
    assert max_diff(logits(model, input_ids), unmerged1) <= TOL  # the refusal changed nothing

    model.unmerge_adapter()
    set_preference(model, lam2)
    model.merge_adapter()
    assert max_diff(logits(model, input_ids), unmerged2) <= TOL
    model.unmerge_adapter()
    with model.disable_adapter():
        assert max_diff(logits(model, input_ids), base_logits) <= TOL

    set_preference(model, ROW_PREFS)  # per-row λ cannot be merged into one weight
    with pytest.raises(ValueError, match="per-row"):
        model.merge_adapter()


def test_merge_and_unload_at_lambda(fresh_base, input_ids):
    model = make_panacea(fresh_base())
    simulate_training(model)
    set_preference(model, [0.25, 0.25, 0.5])
    expected = logits(model, input_ids)
    merged = model.merge_and_unload()
    assert not panacea_layers(merged)
    assert max_diff(logits(merged, input_ids), expected) <= TOL


def test_layer_is_panacea_linear(fresh_base):
    model = make_panacea(fresh_base())
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, PanaceaLinear)
    assert q_proj.n_objectives == {"default": K}
