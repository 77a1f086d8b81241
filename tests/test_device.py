"""Device placement, autocast and activation checkpointing, checked without a GPU.

Where a model must be on "another" device, the meta device stands in for a GPU: a forward pre-hook records where
the inputs arrived and stops the pass (transformers cannot run a full forward on meta tensors).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from pareto.config import DPOConfig, TinyModelConfig, config_from_dict
from pareto.methods.dpo import PairSet, pair_logps, train_dpo
from pareto.methods.reference import reference_logps
from pareto.models.device import (
    DeviceError,
    Placement,
    autocast,
    is_checkpointing,
    place_model,
    precision_dtype,
    resolve_device,
)
from pareto.models.policy import (
    build_tiny_model,
    encode_pairs,
    generate,
    load_policy,
    save_model,
    token_logprobs,
    train_tokenizer,
)
from pareto.models.svd_lora import add_panacea_adapter, panacea_layers, panacea_lora_config, set_preference
from pareto.objectives.losses import masked_objective_means, per_objective_dpo_losses

PROMPTS = ["How do I bake bread?", "Tell me how to tune a guitar.", "What is a good way to save money?"]
RESPONSES = [("Mix flour, water and salt, let it rise, then bake it hot.", "No."),
             ("Use a clip-on tuner.", "Tune the low E string first, then each string against it."),
             ("Plan meals for the week.", "Buy store brands and cook in batches.")]
BETTER = torch.tensor([[0, 0], [1, 0], [1, -1]])  # two objectives, one tie
TINY = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=1, num_kv_heads=1,
                       vocab_size=300, max_length=128)


class Stop(Exception):
    """Raised by a pre-hook once it has seen the inputs (a meta model cannot run its forward)."""


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"User: {p}\nAssistant: {r}" for p, rs in zip(PROMPTS, RESPONSES, strict=True) for r in rs] * 8
    return train_tokenizer(corpus, TINY.vocab_size)


def tiny(tokenizer, seed: int = 0):
    return build_tiny_model(TINY, tokenizer, seed).eval()


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("device") / "tiny"
    save_model(tiny(tokenizer), tokenizer, path)
    return path


def panacea(model, rank: int = 4):
    torch.manual_seed(1)
    peft_model = add_panacea_adapter(model, panacea_lora_config(2, rank, 8.0, ["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # non-zero σ and s so every adapter weight gets a gradient
        for layer in panacea_layers(peft_model):
            layer.lora_sigma["default"].normal_(std=0.5)
            layer.lora_pref_scale["default"].fill_(0.7)
    set_preference(peft_model, [0.3, 0.7])
    return peft_model


def lora(model):
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  lora_dropout=0.0, init_lora_weights=False))
    return peft_model


def record_inputs(model) -> list[dict[str, torch.device]]:
    seen: list[dict[str, torch.device]] = []

    def hook(module, args, kwargs):
        seen.append({k: v.device for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        if next(module.parameters()).device.type == "meta":
            raise Stop

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


# ---- (a) resolving the device and the precision ---------------------------------------------------------------
def test_resolve_device() -> None:
    assert resolve_device(0) == torch.device("cpu")
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert resolve_device(1) == torch.device("cuda", 0) and resolve_device(0.5).type == "cuda"
        return
    with pytest.raises(DeviceError) as err:
        resolve_device(1)
    message = str(err.value)
    assert "\n" not in message and "resources.gpus_per_task" in message and "gpus_per_task: 0" in message


def test_precision_dtype_and_autocast() -> None:
    cpu = torch.device("cpu")
    assert precision_dtype("fp32", cpu) is None and precision_dtype("fp32", "cuda") is None
    assert precision_dtype("bf16", cpu) is torch.bfloat16
    assert precision_dtype("auto", cpu) is None  # CPU bf16 autocast is slow: fp32 there
    if not torch.cuda.is_available():
        assert precision_dtype("auto", torch.device("cuda", 0)) is None  # no GPU here to ask
    with pytest.raises(ValueError, match="model.precision"):
        precision_dtype("fp8", cpu)
    linear = torch.nn.Linear(4, 4)
    with autocast(cpu, None):
        assert linear(torch.ones(1, 4)).dtype == torch.float32
    with autocast(cpu, torch.bfloat16):
        assert linear(torch.ones(1, 4)).dtype == torch.bfloat16


# ---- (b) models and batches land on the device asked for ------------------------------------------------------
def test_load_policy_places_the_model(saved: Path) -> None:
    model, _ = load_policy(saved, device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"} and not is_checkpointing(model)
    model, _ = load_policy(saved, device="meta")  # any device: every parameter and buffer moves
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}


def test_batches_follow_the_model(tokenizer) -> None:
    batch = encode_pairs(tokenizer, PROMPTS, [r[0] for r in RESPONSES], 128)
    assert batch.input_ids.device.type == "cpu"  # built on the CPU, moved by the consumer

    model = tiny(tokenizer).to("meta")
    seen = record_inputs(model)
    with pytest.raises(Stop):
        token_logprobs(model, batch)
    assert seen[-1] == {"input_ids": torch.device("meta"), "attention_mask": torch.device("meta")}
    with pytest.raises(Stop):  # the DPO path (both responses in one pass) too
        pair_logps(model, tokenizer, PROMPTS, RESPONSES, 128)
    assert set(seen[-1].values()) == {torch.device("meta")}

    cpu_model = tiny(tokenizer)
    seen = record_inputs(cpu_model)
    logp, n = token_logprobs(cpu_model, batch)
    assert seen[-1]["input_ids"].type == "cpu" and logp.dtype == n.dtype == torch.float32


def test_generate_sends_prompts_to_the_model_device(tokenizer) -> None:
    class MetaLM(torch.nn.Module):
        """Duck-typed causal LM on the meta device that records where `generate` got its inputs."""

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(1, device="meta"))
            self.seen: list[torch.device] = []

        def generate(self, input_ids, attention_mask, **kwargs):
            self.seen += [input_ids.device, attention_mask.device]
            eos = torch.full((input_ids.shape[0], 1), tokenizer.eos_token_id)
            return torch.cat([torch.zeros(input_ids.shape, dtype=torch.long), eos], dim=1)  # host tensors back

    model = MetaLM()
    assert generate(model, tokenizer, PROMPTS[:2], max_new_tokens=2) == ["", ""]
    assert model.seen == [torch.device("meta")] * 2


def test_panacea_preference_is_written_on_the_layer_device(tokenizer) -> None:
    model = panacea(tiny(tokenizer)).to("meta")
    set_preference(model, [0.25, 0.75])
    layers = panacea_layers(model)
    assert layers and all(layer.lora_pref["default"].device.type == "meta" for layer in layers)
    set_preference(model, np.array([[1.0, 0.0], [0.5, 0.5]]))  # per-row λ too
    assert all(layer.lora_pref["default"].shape == (2, 2) and layer.lora_pref["default"].device.type == "meta"
               for layer in layers)
    fresh = add_panacea_adapter(tiny(tokenizer).to("meta"), panacea_lora_config(2, 4, 8.0, ["q_proj"]))
    assert all(t.device.type == "meta" for layer in panacea_layers(fresh)  # the default λ, before any set
               for t in [*layer.lora_pref.values(), *layer.lora_sigma.values(), *layer.lora_pref_scale.values()])


def test_reward_heads_follow_the_encoder_device(tmp_path: Path) -> None:
    from dataclasses import dataclass

    from pareto.models.reward import LearnedVectorReward, train_reward_model

    class Encoder:
        model_id, dim, max_length = "sentence-transformers/all-MiniLM-L6-v2", 8, 128

        def __init__(self, device: str) -> None:
            self.device = torch.device(device)

        def encode(self, texts, progress=False):
            return torch.stack([torch.tensor([float(len(t) % (i + 2)) for i in range(self.dim)]) for t in texts])

    @dataclass(frozen=True)
    class Pair:
        prompt: str
        response_0: str
        response_1: str
        better: tuple[int, ...]

    pairs = [Pair(p, a, b, (int(len(b) < len(a)),)) for p, (a, b) in zip(PROMPTS, RESPONSES, strict=True)] * 4
    trained = train_reward_model(Encoder("cpu"), ("concise",), pairs, pairs, epochs=3, hidden=(8,))
    reward = LearnedVectorReward(Encoder("cpu"), trained.model, ("concise",))
    scores = reward(PROMPTS, [r[0] for r in RESPONSES])
    assert scores.device.type == "cpu" and scores.shape == (3, 1)
    with Placement(dtype="bfloat16").context():  # scores never depend on the caller's autocast
        assert torch.equal(reward(PROMPTS, [r[0] for r in RESPONSES]), scores)
        again = train_reward_model(Encoder("cpu"), ("concise",), pairs, pairs, epochs=3, hidden=(8,))
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                 trained.model.state_dict().values(), strict=True))
    reward.save(tmp_path / "rm")
    loaded = LearnedVectorReward.load(tmp_path / "rm", encoder=Encoder("meta"))
    assert {p.device.type for p in loaded.model.parameters()} == {"meta"}


def test_hf_reward_from_config_uses_the_task_device() -> None:
    from pareto.models.hf_reward import HFVectorReward

    hf = [{"model": "no/such-model", "objectives": ["helpful", "harmless"]}]
    cfg = config_from_dict({"objectives": ["helpful", "harmless"], "resources": {"gpus_per_task": 1},
                            "reward_model": {"hf": hf}})
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        pytest.skip("this machine has a GPU: the device resolves")
    with pytest.raises(DeviceError, match="resources.gpus_per_task"):  # before any model is loaded
        HFVectorReward.from_config(cfg)


# ---- (c) bf16 autocast on the CPU -----------------------------------------------------------------------------
def dpo_loss(model, tokenizer, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp, _, _ = pair_logps(model, tokenizer, PROMPTS, RESPONSES, 128)
    losses, mask = per_objective_dpo_losses(logp, ref, BETTER, beta=0.5)
    return masked_objective_means(losses, mask).mean(), logp


def test_bf16_autocast_changes_the_forward_not_the_logprob_dtype(tokenizer) -> None:
    placement = Placement(dtype="bfloat16")
    with placement.context():
        assert torch.nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16
    model = panacea(tiny(tokenizer))
    with model.disable_adapter():
        ref = reference_logps(model, tokenizer, PairSet(PROMPTS, RESPONSES, BETTER), 128, batch_size=2)
    assert ref.shape == (3, 2) and ref.device.type == "cpu" and ref.dtype == torch.float32  # stored on the CPU
    with torch.no_grad():
        fp32_loss, fp32_logp = dpo_loss(model, tokenizer, ref)
        with placement.context():
            bf16_loss, bf16_logp = dpo_loss(model, tokenizer, ref)
    assert fp32_logp.dtype == bf16_logp.dtype == torch.float32 and bf16_loss.dtype == torch.float32
    diff = (bf16_loss - fp32_loss).abs().item()
    assert 0 < diff < 0.05 * fp32_loss.abs().item() + 1e-3, (fp32_loss, bf16_loss)
    with placement.context():  # generation runs under autocast
        texts = generate(model, tokenizer, PROMPTS[:2], max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_train_dpo_runs_under_autocast_with_checkpointing(tokenizer) -> None:
    model = panacea(place_model(tiny(tokenizer), "cpu", gradient_checkpointing=True))
    pairs = PairSet(PROMPTS, RESPONSES, BETTER)
    with model.disable_adapter():
        pairs.ref_logp = reference_logps(model, tokenizer, pairs, 128)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = DPOConfig(max_steps=2, batch_size=2, lr=1e-2, eval_every=10)
    with Placement(dtype="bfloat16", gradient_checkpointing=True).context():
        result = train_dpo(model, tokenizer, pairs, cfg, objectives=("a", "b"),
                           sample_weights=lambda rng: np.array([0.5, 0.5]),
                           apply_weights=lambda w: set_preference(model, w),
                           validate=lambda step: (float(step), {}, True), max_length=128)
    assert result.steps == 2 and result.best_step == 2 and np.isfinite(result.history[1]["loss"])
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every adapter tensor trained


# ---- (d) activation checkpointing ----------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", [panacea, lora], ids=["panacea", "lora"])
def test_checkpointing_recomputes_layers_with_the_same_gradients(tokenizer, adapter) -> None:
    grads, calls = {}, {}
    for checkpointing in (False, True):
        model = adapter(place_model(tiny(tokenizer), "cpu", gradient_checkpointing=checkpointing))
        assert is_checkpointing(model) is checkpointing
        if checkpointing:
            assert model.is_gradient_checkpointing and model.config.use_cache is False
        layers = model.get_base_model().model.layers
        count = [0] * len(layers)
        # transformers checkpoints a layer's `forward` (inside the layer's own hooks) and the recompute stops early,
        # once the last saved tensor is back: count the start of the layer's attention block
        for i, layer in enumerate(layers):
            layer.self_attn.register_forward_pre_hook(lambda *_, i=i, c=count: c.__setitem__(i, c[i] + 1))
        model.train()
        logp, _, _ = pair_logps(model, tokenizer, PROMPTS, RESPONSES, 128)
        (-logp.sum()).backward()
        calls[checkpointing] = count
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert calls[False] == [1, 1] and calls[True] == [2, 2]  # each layer's forward reruns in backward
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, grad in grads[False].items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_load_policy_checkpointing_keeps_the_generation_cache(saved: Path) -> None:
    model, tok = load_policy(saved, gradient_checkpointing=True)
    assert is_checkpointing(model) and model.config.use_cache is False and not model.training
    lengths: list[int] = []
    model.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    generate(model, tok, PROMPTS[:1], max_new_tokens=3)
    assert lengths[0] > 1 and lengths[1:] == [1] * (len(lengths) - 1) and len(lengths) > 1  # one token a step: cached


# ---- (e) Placement from the config -----------------------------------------------------------------------------
def test_placement_from_config() -> None:
    placement = Placement.from_config(config_from_dict({}))
    assert placement == Placement("cpu", None, False) and placement.torch_device == torch.device("cpu")
    assert placement.torch_dtype is None
    placement = Placement.from_config(config_from_dict({"model": {"precision": "bf16",
                                                                  "gradient_checkpointing": True}}))
    assert placement == Placement("cpu", "bfloat16", True) and placement.torch_dtype is torch.bfloat16
    assert placement.load_kwargs() == {"device": "cpu", "gradient_checkpointing": True}
    assert pickle.loads(pickle.dumps(placement)) == placement  # travels to Ray workers
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="resources.gpus_per_task"):
            Placement.from_config(config_from_dict({"resources": {"gpus_per_task": 1}}))
    with pytest.raises(ValueError, match="dtype"):
        Placement(dtype="float64")
    with pytest.raises(RuntimeError):
        Placement(device="no-such-device")
