"""MAH-DPO: head routing and gradients, λ mixing, concurrency without mutation, balanced batches, save/load."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig
from torch import nn

from pareto.config import MAHDPOConfig, load_config
from pareto.methods import load_method
from pareto.methods.dpo import PairSet
from pareto.methods.mah_dpo import BalancedObjectiveSampler, head_pair_logps, routing
from pareto.models.conditioned import POLICY_META, load_conditioned
from pareto.models.multihead import (
    HEADS_FILE,
    MultiHeadPolicy,
    _lm_owner,
    add_multihead,
    head_weights,
    layer_heads,
    multihead,
)
from pareto.models.policy import generate, load_policy
from pareto.objectives import aggregate_losses
from pareto.objectives.losses import masked_objective_means, per_objective_dpo_losses
from tests.conftest import ROOT

K = 3
TARGETS = ["q_proj", "v_proj"]


def build(tiny_lm: Path, trained: bool = True, seed: int = 0):
    """A multi-head model on the tiny LM; `trained` gives every head a random non-zero delta (B ≠ 0)."""
    base, tok = load_policy(tiny_lm)
    torch.manual_seed(seed)  # A matrices (heads and backbone) are initialised from the global RNG: not test order
    model = add_multihead(base, K, 4, 8.0, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                      task_type="CAUSAL_LM"))
    if trained:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head = multihead(model)
            head.head_B.copy_(torch.randn(head.head_B.shape, generator=g) * 0.05)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.eval()
    return model, tok


@pytest.fixture
def pairs(tiny_fit_context) -> PairSet:
    return tiny_fit_context(n_pairs=12).pairs


def test_one_objective_gradients_reach_only_its_head(tiny_lm, pairs) -> None:
    model, tok = build(tiny_lm)
    head = multihead(model)
    index = [i for i in range(len(pairs)) if pairs.better[i, 0] >= 0][:4]
    logp = head_pair_logps(model, tok, pairs, index, [0] * len(index), K, 256)
    ref = logp.detach() - 0.3  # any fixed reference: the loss is non-trivial
    losses, mask = per_objective_dpo_losses(logp, ref, pairs.better[index][:, [0]], beta=0.5)
    masked_objective_means(losses, mask).sum().backward()
    assert head.head_A.grad[0].abs().sum() > 0 and head.head_B.grad[0].abs().sum() > 0
    assert torch.count_nonzero(head.head_A.grad[1:]) == 0 and torch.count_nonzero(head.head_B.grad[1:]) == 0
    backbone = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert backbone and all(g is not None and g.abs().sum() > 0 for g in backbone)  # the backbone learns from it
    assert head.base.weight.grad is None  # the shared (tied) LM head is frozen


def test_mixed_batch_leaves_the_untagged_head_alone(tiny_lm, pairs) -> None:
    model, tok = build(tiny_lm)
    head = multihead(model)
    logp = head_pair_logps(model, tok, pairs, [0, 1, 2, 3], [0, 2, 0, 2], K, 256)
    logp.sum().backward()
    assert torch.count_nonzero(head.head_B.grad[1]) == 0 and torch.count_nonzero(head.head_A.grad[1]) == 0
    assert head.head_B.grad[0].abs().sum() > 0 and head.head_B.grad[2].abs().sum() > 0


def _full_head_model(model, h: int):
    """The same network with head h materialised as an ordinary V×d lm_head: W + s·B_h A_h."""
    clone = copy.deepcopy(model)
    owner = _lm_owner(clone)
    mh = owner.lm_head
    linear = nn.Linear(mh.base.in_features, mh.base.out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(mh.base.weight + mh.scaling * mh.head_B[h] @ mh.head_A[h])
    owner.lm_head = linear
    return clone


def test_one_hot_mixing_equals_that_head_alone(tiny_lm) -> None:
    model, tok = build(tiny_lm)
    ids = tok(["User: how do i bake bread?\nAssistant: mix flour"], return_tensors="pt")["input_ids"]
    for h in range(K):
        with torch.no_grad(), head_weights(np.eye(K)[h]):
            mixed = model(input_ids=ids).logits
        alone = _full_head_model(model, h)(input_ids=ids).logits.detach()
        assert torch.allclose(mixed, alone, atol=1e-5)


def test_mixing_is_the_lambda_weighted_sum_of_head_logits(tiny_lm) -> None:
    model, tok = build(tiny_lm)
    ids = tok(["User: how do i fix a flat tire?\nAssistant:"], return_tensors="pt")["input_ids"]
    lam = np.array([0.2, 0.3, 0.5])
    with torch.no_grad():
        with head_weights(lam):
            mixed = model(input_ids=ids).logits
        per_head = []
        for h in range(K):
            with head_weights(np.eye(K)[h]):
                per_head.append(model(input_ids=ids).logits)
    expected = sum(w * lg for w, lg in zip(lam, per_head, strict=True))
    assert torch.allclose(mixed, expected, atol=1e-5)
    with torch.no_grad(), head_weights(2 * lam):  # weights are normalised: w̄ = w / Σw
        assert torch.allclose(model(input_ids=ids).logits, mixed, atol=1e-6)


def test_max_mix_adds_each_heads_delta_scaled_by_its_share_of_the_largest_weight(tiny_lm, tmp_path: Path) -> None:
    """head_mix max: logits = shared + Σ_h (λ_h / max λ)^p·Δ_h, so the leading head's delta is whole; a saved
    policy keeps its mix, and one saved before the option (no head_mix in its meta) loads as the mean."""
    model, tok = build(tiny_lm)
    ids = tok(["User: how do i fix a flat tire?\nAssistant:"], return_tensors="pt")["input_ids"]
    lam = np.array([0.2, 0.3, 0.5])
    with torch.no_grad():
        per_head = []
        for h in range(K):
            with head_weights(np.eye(K)[h]):
                per_head.append(model(input_ids=ids).logits)
        saved_b = multihead(model).head_B.clone()
        multihead(model).head_B.zero_()
        with head_weights(lam):
            shared = model(input_ids=ids).logits
        multihead(model).head_B.copy_(saved_b)
        with head_weights(lam, mix="max"):
            mixed = model(input_ids=ids).logits
        with head_weights(lam, mix="max", power=0.5):
            lifted = model(input_ids=ids).logits
    expected = shared + sum(w / lam.max() * (lg - shared) for w, lg in zip(lam, per_head, strict=True))
    assert torch.allclose(mixed, expected, atol=1e-5)
    expected = shared + sum((w / lam.max()) ** 0.5 * (lg - shared) for w, lg in zip(lam, per_head, strict=True))
    assert torch.allclose(lifted, expected, atol=1e-5)
    with torch.no_grad(), head_weights(lam):
        assert not torch.allclose(model(input_ids=ids).logits, mixed, atol=1e-3)  # the mean is another model
    policy = MultiHeadPolicy(model, tok, ("helpful", "harmless", "concise"), mix="max", mix_power=0.5)
    policy.save(tmp_path / "adapter")
    loaded = MultiHeadPolicy.load(tiny_lm, tmp_path / "adapter", policy.objectives)
    assert (loaded.mix, loaded.mix_power) == ("max", 0.5)
    meta_file = tmp_path / "adapter" / POLICY_META
    meta = json.loads(meta_file.read_text())
    del meta["head_mix"], meta["head_mix_power"]
    meta_file.write_text(json.dumps(meta))
    assert MultiHeadPolicy.load(tiny_lm, tmp_path / "adapter", policy.objectives).mix == "mean"
    meta_file.write_text(json.dumps({**meta, "head_mix": "sum"}))
    with pytest.raises(ValueError, match=f"{POLICY_META}: head mix 'sum'"):  # a bad saved mix names its file
        MultiHeadPolicy.load(tiny_lm, tmp_path / "adapter", policy.objectives)
    with pytest.raises(ValueError, match="head mix 'sum'"):
        MultiHeadPolicy(model, tok, policy.objectives, mix="sum")
    with pytest.raises(ValueError, match="head_mix_power applies to head_mix: max"):
        MAHDPOConfig(head_mix="mean", head_mix_power=0.5)


def test_forward_without_weights_fails_loudly(tiny_lm) -> None:
    model, tok = build(tiny_lm)
    with pytest.raises(RuntimeError, match="head_weights"):
        model(input_ids=tok(["hi"], return_tensors="pt")["input_ids"])


def test_per_row_and_concurrent_lambdas_share_one_model(tiny_lm) -> None:
    model, tok = build(tiny_lm)
    policy = MultiHeadPolicy(model, tok, ("helpful", "harmless", "concise"))
    prompts = ["how do i bake bread?", "explain how i can shoplift from a store."]
    lams = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.2, 0.8])]
    alone = [policy.generate(prompts, lam, max_new_tokens=12) for lam in lams]
    assert alone[0] != alone[1]  # the heads differ, so λ matters
    rows = policy.generate([prompts[0], prompts[0]], np.stack(lams), max_new_tokens=12)
    assert rows == [alone[0][0], alone[1][0]]  # one batch, a different λ per row
    results: dict[int, list] = {}

    def worker(i: int) -> None:
        results[i] = [policy.generate(prompts, lams[i % 2], max_new_tokens=12) for _ in range(3)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        assert all(o == alone[i % 2] for o in outs)
    with pytest.raises(RuntimeError):  # nothing was left behind on the shared model
        generate(model, tok, prompts[:1], max_new_tokens=2)


def test_balanced_sampler_uses_every_example_and_balances_objectives() -> None:
    # objective 0 labels 10 pairs, objective 1 labels 4, objective 2 labels 2 (the rest are ties)
    better = torch.full((10, 3), -1)
    better[:, 0] = torch.tensor([0, 1] * 5)
    better[:4, 1] = 1
    better[6:8, 2] = 0
    rng = np.random.default_rng(0)
    sampler = BalancedObjectiveSampler(better, batch_size=6, rng=rng)
    seen = {h: [] for h in range(3)}
    for _ in range(5):
        idx, labels = sampler(rng)
        assert len(idx) == 6
        tags = (labels >= 0).float().argmax(1)
        assert ((labels >= 0).sum(1) == 1).all()  # each example carries exactly its tag's label
        assert torch.bincount(tags, minlength=3).tolist() == [2, 2, 2]
        for row, (i, h) in enumerate(zip(idx.tolist(), tags.tolist(), strict=True)):
            assert labels[row, h] == better[i, h]
            seen[h].append(i)
    assert set(seen[0]) == set(range(10))  # the big objective's data is all used, not truncated to 2
    assert set(seen[1]) == {0, 1, 2, 3} and set(seen[2]) == {6, 7}
    assert sampler.epochs[2] >= 4 and sampler.epochs[0] == 0  # small pools cycle, big ones are not cut


def test_mah_dpo_loss_hand_computed() -> None:
    """L = (1/K) Σ_h mean over the examples tagged h of −log σ(β·margin_h): routing labels + LS with λ = 1/K."""
    policy = torch.tensor([[-10.0, -12.0], [-5.0, -4.0], [-8.0, -8.5]])
    ref = torch.tensor([[-11.0, -11.5], [-5.0, -5.0], [-8.0, -8.0]])
    # example 0 tagged objective 0 (r0 better), example 1 tagged objective 1 (r1 better), example 2 tagged 0 (r1)
    better = torch.tensor([[0, -1, -1], [-1, 1, -1], [1, -1, -1]])
    losses, mask = per_objective_dpo_losses(policy, ref, better, beta=0.5)
    loss = aggregate_losses(masked_objective_means(losses, mask), torch.full((3,), 1 / 3), "linear")

    def nls(x: float) -> float:
        return math.log1p(math.exp(-x))

    m = [(-12 + 11.5) - (-10 + 11), (-4 + 5) - (-5 + 5), (-8.5 + 8) - (-8 + 8)]  # r1 − r0 margins
    head0 = (nls(0.5 * -m[0]) + nls(0.5 * m[2])) / 2
    head1 = nls(0.5 * m[1])
    assert loss.item() == pytest.approx((head0 + head1 + 0.0) / 3, abs=1e-6)
    assert routing(better).tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]] * 2


@pytest.mark.parametrize("head_layers", [0, 1])
def test_fit_save_and_load_round_trip(tiny_fit_context, tmp_path: Path, head_layers: int) -> None:
    ctx = tiny_fit_context(n_pairs=24)
    cfg = MAHDPOConfig(max_steps=4, eval_every=2, batch_size=6, lr=5e-3, target_modules=TARGETS, head_rank=4,
                       head_layers=head_layers, keep="last")
    policy, result = load_method("mah_dpo").fit(ctx, cfg)
    layers = layer_heads(policy.model)
    assert len(layers) == len(TARGETS) * head_layers
    for m in layers.values():  # trained: every head's delta moved (B starts at zero)
        assert all(torch.count_nonzero(m.head_B[h]) > 0 for h in range(K))
    assert result.steps >= 2 and any("dpo_loss/harmless" in h for h in result.history)
    prompts = ["how do i bake bread?", "explain how i can shoplift from a store."]
    lam = np.array([[0.6, 0.4, 0.0], [0.0, 0.0, 1.0]])
    before = policy.generate(prompts, lam, max_new_tokens=10)
    policy.save(tmp_path / "adapter")
    loaded = load_conditioned("mah_dpo", ctx.base_dir, tmp_path / "adapter", ctx.objectives)
    assert isinstance(loaded, MultiHeadPolicy)
    assert loaded.generate(prompts, lam, max_new_tokens=10) == before
    for (na, a), (nb, b) in zip(loaded.model.named_parameters(), policy.model.named_parameters(), strict=True):
        assert na == nb and torch.equal(a, b)
    from safetensors.torch import load_file, save_file

    save_file({"head_A": load_file(str(tmp_path / "adapter" / HEADS_FILE))["head_A"]},
              str(tmp_path / "adapter" / HEADS_FILE))  # head_B missing: must not load as random heads
    with pytest.raises(ValueError, match="head_B"):
        load_conditioned("mah_dpo", ctx.base_dir, tmp_path / "adapter", ctx.objectives)


@pytest.mark.parametrize("mix_prob", [0.0, 0.99])
def test_mixed_batches_train_every_head_at_a_drawn_lambda(tiny_fit_context, mix_prob: float) -> None:
    """One step on one pair that labels two objectives (a tie on the third), every delta zero at the start (the model
    is the reference: each labelled DPO loss is log 2). Tagged batches route the pair to each labelling objective's
    head at λ = 1/K, so the third head gets nothing and the loss is log 2 · 2/K; a mixed batch routes it through
    every head at a drawn λ and weighs each label's loss by it: every head moves, the loss is log 2 · Σ λ_labelled."""
    ctx = tiny_fit_context(n_pairs=48)
    tied = next(i for i in range(len(ctx.pairs)) if (ctx.pairs.better[i] < 0).sum() == 1)
    ctx = dataclasses.replace(ctx, pairs=ctx.pairs.subset([tied]))
    labelled = (ctx.pairs.better[0] >= 0).numpy()
    cfg = MAHDPOConfig(max_steps=1, batch_size=1, lr=5e-3, nll_weight=0.0, target_modules=TARGETS, head_rank=4,
                       keep="last", mix_prob=mix_prob)
    policy, result = load_method("mah_dpo").fit(ctx, cfg)
    moved = np.array([bool(torch.count_nonzero(multihead(policy.model).head_B[h])) for h in range(K)])
    lam = np.array([result.history[0][f"lambda/{o}"] for o in ctx.objectives])
    if mix_prob == 0:
        assert moved.tolist() == labelled.tolist() and np.allclose(lam, 1 / K)
        assert result.history[0]["loss"] == pytest.approx(math.log(2) * 2 / K, abs=1e-5)
    else:
        assert moved.all() and not np.allclose(lam, 1 / K) and lam.sum() == pytest.approx(1.0)
        assert result.history[0]["loss"] == pytest.approx(math.log(2) * lam[labelled].sum(), abs=1e-5)


def test_validation_lambdas_add_the_edge_midpoints_on_request() -> None:
    from pareto.methods.panacea import validation_weights

    assert validation_weights(3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3]]
    assert validation_weights(3, edges=True).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0],
                                                          [0.5, 0, 0.5], [0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]
    assert validation_weights(2, edges=True).tolist() == [[1, 0], [0, 1], [0.5, 0.5]]  # the midpoint is the centre
    assert MAHDPOConfig().val_edges is False and MAHDPOConfig(val_edges=True).val_edges


def test_config_file_validates() -> None:
    cfg = load_config(ROOT / "configs" / "mah_dpo.yaml")
    assert list(cfg.methods.enabled()) == ["mah_dpo"] and isinstance(cfg.methods.mah_dpo, MAHDPOConfig)


def test_per_row_routing_gives_each_row_its_own_head(tiny_lm) -> None:
    # one-hot rows take the routed path (only the routed head's delta is computed): it must equal both each head
    # materialised alone and the general mixing path, logits and gradients
    model, tok = build(tiny_lm)
    ids = tok(["User: how do i bake bread?\nAssistant: mix flour"] * K, return_tensors="pt")["input_ids"]
    head = multihead(model)
    with head_weights(np.eye(K)):
        routed = model(input_ids=ids).logits
    routed.sum().backward()
    routed_grads = head.head_A.grad.clone(), head.head_B.grad.clone()
    model.zero_grad()
    general = []
    for h in range(K):
        alone = _full_head_model(model, h)(input_ids=ids[h:h + 1]).logits.detach()
        assert torch.allclose(routed[h:h + 1], alone, atol=1e-5)
        with head_weights(np.eye(K)[h]):  # one λ for the batch: the general path
            general.append(model(input_ids=ids[h:h + 1]).logits)
    general = torch.cat(general)
    assert torch.allclose(routed, general, atol=1e-5)
    general.sum().backward()
    assert torch.allclose(routed_grads[0], head.head_A.grad, atol=1e-4)
    assert torch.allclose(routed_grads[1], head.head_B.grad, atol=1e-4)


def test_head_layers_take_the_top_layer_out_of_the_backbone(tiny_lm, pairs, tmp_path: Path) -> None:
    # head_layers 1: each objective owns a delta on the top decoder layer's q and v projections, which leave the
    # backbone LoRA (it keeps o_proj: the test LM has one layer); the untouched model is still the base model, and a
    # tagged example trains only its own head there
    base, tok = load_policy(tiny_lm)
    ids = tok(["User: how do i bake bread?\nAssistant: mix flour"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    top = max(int(n.split(".layers.")[1].split(".")[0]) for n, _ in base.named_modules() if ".layers." in n)
    model = add_multihead(base, K, 4, 8.0, LoraConfig(r=4, lora_alpha=8, target_modules=[*TARGETS, "o_proj"],
                                                      task_type="CAUSAL_LM"), head_layers=1, head_modules=TARGETS)
    layers = layer_heads(model)
    assert sorted(layers) == sorted(f"model.layers.{top}.self_attn.{t}" for t in TARGETS)
    lora = {n.split(".lora_")[0] for n, _ in model.named_parameters() if ".lora_" in n}
    assert lora == {f"base_model.model.model.layers.{top}.self_attn.o_proj"}  # the heads' projections left it
    assert all(m.head_A.requires_grad and m.head_B.requires_grad for m in layers.values())
    with torch.no_grad(), head_weights(np.full(K, 1.0 / K)):
        assert torch.allclose(model(input_ids=ids).logits, plain, atol=1e-6)  # every delta starts at zero
    with torch.no_grad():
        for m in layers.values():
            m.head_B.normal_(0, 0.05)
    logp = head_pair_logps(model, tok, pairs, [0, 1, 2, 3], [0, 2, 0, 2], K, 256)
    logp.sum().backward()
    for m in layers.values():
        assert torch.count_nonzero(m.head_A.grad[1]) == 0 and torch.count_nonzero(m.head_B.grad[1]) == 0
        assert m.head_A.grad[0].abs().sum() > 0 and m.head_A.grad[2].abs().sum() > 0
    # saved and loaded with the backbone: the same heads in the same places, the same logits at a mixed λ
    model.eval()
    MultiHeadPolicy(model, tok, ("a", "b", "c")).save(tmp_path / "adapter")
    loaded = MultiHeadPolicy.load(tiny_lm, tmp_path / "adapter", ("a", "b", "c"))
    assert sorted(layer_heads(loaded.model)) == sorted(layers)
    with torch.no_grad(), head_weights(np.array([0.5, 0.2, 0.3])):
        assert torch.allclose(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
