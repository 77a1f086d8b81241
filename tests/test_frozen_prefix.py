"""The frozen prefix: with LoRA on the top layers only, training runs from the hidden states the reference pass kept.

It must change nothing but the work done: the same log-probs and gradients as the full forward, the same trained
weights after `train_dpo`, and a full forward wherever the cached states cannot stand in (everything adapted,
trainable embeddings, a cache that does not match).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from pareto.config import DPOConfig, TinyModelConfig
from pareto.methods.dpo import PairSet, pair_logps, train_dpo, verified_prefix
from pareto.methods.reference import prepare_reference
from pareto.models.policy import build_tiny_model, lora_targets, train_tokenizer
from pareto.models.prefix import FrozenPrefix
from pareto.models.svd_lora import add_panacea_adapter, panacea_lora_config, set_preference

PROMPTS = ["How do I bake bread?", "Tell me how to tune a guitar.", "What is a good way to save money?",
           "How can I sleep better?"]
RESPONSES = [("Mix flour, water and salt, let it rise, then bake it hot.", "No."),
             ("Use a clip-on tuner.", "Tune the low E string first, then each string against it."),
             ("Plan meals for the week.", "Buy store brands and cook in batches."),
             ("Keep a fixed bedtime and a dark room.", "Sleep is hard.")]
BETTER = torch.tensor([[0, -1], [1, 0], [-1, 1], [0, 0]])
TINY = TinyModelConfig(hidden_size=64, intermediate_size=128, num_layers=4, num_heads=1, num_kv_heads=1,
                       vocab_size=300, max_length=128)
MODULES = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"User: {p}\nAssistant: {r}" for p, rs in zip(PROMPTS, RESPONSES, strict=True) for r in rs] * 8
    return train_tokenizer(corpus, TINY.vocab_size)


def panacea(tokenizer, top_layers: int | None):
    model = build_tiny_model(TINY, tokenizer, 0)
    return add_panacea_adapter(model, panacea_lora_config(2, 4, 64, lora_targets(model, MODULES, top_layers)))


def pairs_with_reference(model, tokenizer) -> PairSet:
    pairs = PairSet(PROMPTS, RESPONSES, BETTER)
    prepare_reference(model, tokenizer, pairs, 128, model.disable_adapter)
    return pairs


def test_prefix_starts_at_the_lowest_adapted_layer(tokenizer) -> None:
    assert FrozenPrefix.of(panacea(tokenizer, 1)).first == 3
    assert FrozenPrefix.of(panacea(tokenizer, 3)).first == 1
    assert FrozenPrefix.of(panacea(tokenizer, None)) is None  # every layer adapted: nothing to skip
    model = panacea(tokenizer, 1)
    model.get_input_embeddings().weight.requires_grad_(True)
    assert FrozenPrefix.of(model) is None  # something below the layers trains


def test_cached_forward_gives_the_full_forwards_logprobs_and_gradients(tokenizer) -> None:
    model = panacea(tokenizer, 2)
    pairs = pairs_with_reference(model, tokenizer)
    assert pairs.prefix is not None and pairs.prefix.layer == 2 and len(pairs.prefix.rows) == len(PROMPTS)
    with torch.no_grad():  # a non-zero adapter, so the top layers' change matters
        for name, p in model.named_parameters():
            if "lora_sigma" in name or "lora_pref_scale" in name:
                p.normal_(0, 1.0)
    set_preference(model, [0.3, 0.7])
    model.train()
    prefix = verified_prefix(model, tokenizer, pairs, 128)
    assert prefix is not None and prefix.first == 2
    idx = [3, 0, 2]
    grads = []
    for cached in (None, (prefix, pairs.prefix, idx)):
        model.zero_grad()
        logp, ntok, _ = pair_logps(model, tokenizer, [PROMPTS[i] for i in idx], [RESPONSES[i] for i in idx], 128,
                                   cached)
        (logp * torch.tensor([[1.0, -0.5]])).sum().backward()
        grads.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (full, full_grads), (fast, fast_grads) = grads
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    assert full_grads.keys() == fast_grads.keys() and len(full_grads) > 0
    for name in full_grads:
        assert full_grads[name].abs().sum() > 0, name
        torch.testing.assert_close(fast_grads[name], full_grads[name], rtol=1e-4, atol=1e-6)


def train(tokenizer, keep_prefix: bool) -> tuple[dict[str, torch.Tensor], list[float]]:
    model = panacea(tokenizer, 2)
    pairs = pairs_with_reference(model, tokenizer)
    if not keep_prefix:
        pairs.prefix = None
    cfg = DPOConfig(max_steps=4, batch_size=2, lr=1e-2, eval_every=10)
    result = train_dpo(model, tokenizer, pairs, cfg, objectives=("a", "b"),
                       sample_weights=lambda rng: np.array([0.4, 0.6]),
                       apply_weights=lambda w: set_preference(model, w),
                       validate=lambda step: (float(step), {}, True), max_length=128)
    return ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            [h["loss"] for h in result.history if "loss" in h])


def test_training_from_the_cache_trains_the_same_model(tokenizer) -> None:
    (full, full_losses), (fast, fast_losses) = train(tokenizer, False), train(tokenizer, True)
    np.testing.assert_allclose(fast_losses, full_losses, rtol=1e-4, atol=1e-6)
    assert len(full_losses) == 4 and full_losses[0] != full_losses[-1]
    for name in full:
        torch.testing.assert_close(fast[name], full[name], rtol=1e-4, atol=1e-5)


def test_a_cache_that_does_not_match_the_model_is_not_used(tokenizer) -> None:
    model = panacea(tokenizer, 2)
    pairs = pairs_with_reference(model, tokenizer)
    model.train()
    assert verified_prefix(model, tokenizer, pairs, 128) is not None
    wrong = pairs.prefix.rows
    pairs.prefix.rows = [(a + 1.0, b) for a, b in wrong]  # not what the frozen layers produce
    assert verified_prefix(model, tokenizer, pairs, 128) is None
    pairs.prefix.rows = wrong
    other = panacea(tokenizer, 3)  # adapted from layer 1: the cache from layer 2 cannot stand in
    assert verified_prefix(other, tokenizer, pairs, 128) is None


def test_plain_lora_keeps_its_prefix_too(tokenizer) -> None:
    base = build_tiny_model(TINY, tokenizer, 0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=lora_targets(base, MODULES, 1),
                                            task_type="CAUSAL_LM"))
    pairs = pairs_with_reference(model, tokenizer)
    model.train()
    assert pairs.prefix.layer == 3 and verified_prefix(model, tokenizer, pairs, 128).first == 3


def test_the_reference_is_computed_once_per_base_model_and_pairs(tokenizer, tmp_path, monkeypatch) -> None:
    import pareto.methods.reference as reference
    from pareto.cache import list_entries

    calls = []
    real = reference.reference_logps
    monkeypatch.setattr(reference, "reference_logps", lambda *a, **k: calls.append(1) or real(*a, **k))

    def prepared(model, pairs: PairSet) -> PairSet:
        reference.prepare_reference(model, tokenizer, pairs, 128, model.disable_adapter, tmp_path / "cache")
        return pairs

    first = prepared(panacea(tokenizer, 2), PairSet(PROMPTS, RESPONSES, BETTER))
    torch.manual_seed(1)  # another adapter init on the same base: the same reference, read back
    again = prepared(panacea(tokenizer, 2), PairSet(PROMPTS, RESPONSES, BETTER))
    assert len(calls) == 1
    torch.testing.assert_close(again.ref_logp, first.ref_logp, rtol=0, atol=0)
    assert again.prefix.layer == 2 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                           for a, b in zip(again.prefix.rows, first.prefix.rows, strict=True))
    prepared(panacea(tokenizer, 2), PairSet(PROMPTS[:3], RESPONSES[:3], BETTER[:3]))  # other pairs: computed
    other_base = build_tiny_model(TINY, tokenizer, 1)
    other = add_panacea_adapter(other_base, panacea_lora_config(2, 4, 64, lora_targets(other_base, MODULES, 2)))
    prepared(other, PairSet(PROMPTS, RESPONSES, BETTER))  # other base weights: computed
    assert len(calls) == 3
    entries = [e for e in list_entries(tmp_path) if e.kind == "reference"]
    assert len(entries) == 3 and all(e.finished and e.current for e in entries)
