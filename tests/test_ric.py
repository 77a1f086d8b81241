"""RiC: the prompt format round trip, the λ → desired-reward mapping by hand, MORS pieces, the loss, fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pareto.config import RiCConfig, load_config
from pareto.methods import load_method
from pareto.methods.ric import above_quantile, offline_samples, sample_targets
from pareto.models.conditioned import load_conditioned
from pareto.models.policy import encode_pairs, load_policy, response_logprobs, token_logprobs
from pareto.models.rewards_in_context import (
    MAPPINGS,
    RiCPolicy,
    format_prompt,
    format_value,
    parse_prompt,
    preference_to_rewards,
)
from tests.conftest import ROOT

NAMES = ("helpful", "harmless", "concise")


@pytest.mark.parametrize("prompt", [
    "how do i bake bread?",
    "explain version 1.3",                      # ends in a number
    "what does <helpful> mean",                 # contains a tag name
    "tell me about the harmless concise help ",  # ends in characters of the tag block (rstrip would eat them)
    "sum 2.0 <helpful> +1.0 and more",          # contains a tag-shaped fragment in the middle
    "",
])
@pytest.mark.parametrize("rewards", [(1.26, -0.04, 0.0), (-2.35, 2.35, 10.04), (0.0, -0.0, 0.05)])
@pytest.mark.parametrize("style", ["named", "values"])
def test_prompt_format_round_trip(prompt: str, rewards: tuple[float, ...], style: str) -> None:
    text = format_prompt(prompt, NAMES, rewards, style)
    back, values = parse_prompt(text, NAMES, style)
    assert back == prompt
    assert values == tuple(float(format_value(r)) for r in rewards)
    assert all(abs(v - r) <= 0.05 + 1e-9 for v, r in zip(values, rewards, strict=True))  # rounded to 0.1


def test_format_is_fixed_width_and_has_no_negative_zero() -> None:
    assert format_prompt("hi", NAMES, (1.26, -0.04, -2.0)) == "hi <helpful> +1.3 <harmless> +0.0 <concise> -2.0"
    assert format_prompt("hi", NAMES, (1.26, -0.04, -2.0), "values") == "hi [+1.3 +0.0 -2.0]"
    with pytest.raises(ValueError, match="no reward tags"):  # one style's prompt is not the other's
        parse_prompt("hi <helpful> +1.3 <harmless> +0.0 <concise> -2.0", NAMES, "values")
    with pytest.raises(ValueError, match="unknown tag style"):
        format_prompt("hi", NAMES, (0.0, 0.0, 0.0), "json")
    assert [format_value(v) for v in (0.05, -0.05, 0.15, -1.25)] == ["+0.1", "-0.1", "+0.1", "-1.2"]  # Python round()


def test_rstrip_would_have_broken_the_prompt() -> None:
    """The reference code's bug: str.rstrip(suffix) strips a character *set*; removesuffix strips the suffix."""
    prompt = "please help"
    text = format_prompt(prompt, NAMES, (1.0, 2.0, 3.0))
    suffix = text[len(prompt):]
    assert text.rstrip(suffix) != prompt  # 'please help' loses its trailing letters
    assert parse_prompt(text, NAMES)[0] == prompt
    with pytest.raises(ValueError, match="no reward tags"):
        parse_prompt("how do i bake bread? <helpful> 1.0", NAMES)


def test_linf_mapping_hand_worked() -> None:
    """r̂_j = hi_j for j = argmax λ; r̂_i = lo_i + min(K·λ_i, 1)·(hi_i − lo_i) otherwise."""
    lo, hi = [-1.0, -2.0], [1.0, 2.0]
    # λ = (0.7, 0.3): objective 0 asks for its max 1; objective 1: min(0.6, 1) = 0.6 → −2 + 0.6·4 = 0.4
    np.testing.assert_allclose(preference_to_rewards([0.7, 0.3], lo, hi), [1.0, 0.4])
    np.testing.assert_allclose(preference_to_rewards([1.0, 0.0], lo, hi), [1.0, -2.0])  # a vertex: max and min
    np.testing.assert_allclose(preference_to_rewards([0.5, 0.5], lo, hi), [1.0, 2.0])  # K·λ_i = 1: both at max
    # K = 3, λ = (0.2, 0.5, 0.3) on [0, 10]: (min(0.6,1)·10, 10 (argmax), min(0.9,1)·10)
    np.testing.assert_allclose(preference_to_rewards([0.2, 0.5, 0.3], [0, 0, 0], [10, 10, 10]), [6.0, 10.0, 9.0])
    batch = preference_to_rewards(np.array([[0.7, 0.3], [0.0, 1.0]]), lo, hi)
    np.testing.assert_allclose(batch, [[1.0, 0.4], [-1.0, 2.0]])


def test_l2_and_linear_mappings_hand_worked() -> None:
    lo, hi = [-1.0, -2.0], [1.0, 2.0]
    # l2: λ/‖λ‖ = (0.6, 0.8) for λ ∝ (3, 4) → (−1 + 0.6·2, −2 + 0.8·4) = (0.2, 1.2)
    np.testing.assert_allclose(preference_to_rewards([3 / 7, 4 / 7], lo, hi, "l2"), [0.2, 1.2])
    np.testing.assert_allclose(preference_to_rewards([0.25, 0.75], lo, hi, "linear"), [-0.5, 1.0])
    with pytest.raises(ValueError, match="unknown mapping"):
        preference_to_rewards([0.5, 0.5], lo, hi, "gauss")


def test_front_mapping_hand_worked() -> None:
    """front: the mean of the top fraction of observed vectors under λ · (r − low)/(high − low)."""
    observed = np.array([[2.0, -1.0], [1.0, 1.0], [-1.0, 3.0], [0.0, 0.0]])
    lo, hi = observed.min(0), observed.max(0)  # spans 3 and 4
    # λ = (1, 0): normalised first coordinates 1, 2/3, 0, 1/3 → the top one is (2, −1)
    np.testing.assert_allclose(preference_to_rewards([1.0, 0.0], lo, hi, "front", observed, top=0.25), [2.0, -1.0])
    # λ = (0.5, 0.5): scores (1 + 0)/2, (2/3 + 1/2)/2, (0 + 1)/2, (1/3 + 1/4)/2 → (1, 1) first, then (2, −1) and
    # (−1, 3) tie at 0.5 (the earlier wins): the top half is the mean of (1, 1) and (2, −1)
    np.testing.assert_allclose(preference_to_rewards([0.5, 0.5], lo, hi, "front", observed, top=0.5), [1.5, 0.0])
    batch = preference_to_rewards(np.array([[0.0, 1.0], [1.0, 0.0]]), lo, hi, "front", observed, top=0.25)
    np.testing.assert_allclose(batch, [[-1.0, 3.0], [2.0, -1.0]])
    # a vertex asks for a combination that was observed, not (max, min) of the box: (2, −1) here, (2, −1) for linf
    # too, but with a third objective the closed forms put the others at their minimum jointly
    obs3 = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.5]])
    lo3, hi3 = obs3.min(0), obs3.max(0)
    np.testing.assert_allclose(preference_to_rewards([1, 0, 0], lo3, hi3, "front", obs3, top=0.3), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(preference_to_rewards([1, 0, 0], lo3, hi3, "linf"), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="needs the observed reward vectors"):
        preference_to_rewards([1.0, 0.0], lo, hi, "front")


def test_policy_maps_lambda_into_the_observed_range() -> None:
    policy = RiCPolicy(None, None, NAMES, low=[-2.2, -2.7, -2.7], high=[2.4, 2.4, 2.9])
    prompts = policy.conditioned_prompts(["hi", "yo"], np.array([[1.0, 0.0, 0.0], [0.2, 0.2, 0.6]]))
    assert prompts[0] == "hi <helpful> +2.4 <harmless> -2.7 <concise> -2.7"
    # (0.2, 0.2, 0.6): concise at its max; the others at lo + 0.6·span
    assert prompts[1] == "yo <helpful> +0.6 <harmless> +0.4 <concise> +2.9"


def test_sample_targets_sit_on_the_edge_of_the_observed_box() -> None:
    lo, hi = np.array([-2.0, -1.0, 0.0]), np.array([2.0, 3.0, 1.0])
    t = sample_targets(np.random.default_rng(0), 500, lo, hi)
    at_max = np.isclose(t, hi)
    assert (at_max.sum(1) >= 2).all()  # every coordinate but (at most) one is at its maximum
    assert ((t >= lo - 1e-9) & (t <= hi + 1e-9)).all()
    free = t[~at_max]
    np.testing.assert_allclose(free, np.round(free, 1))  # the varied one is rounded to 0.1
    assert set(np.argmin(at_max, axis=1)[~at_max.all(1)]) == {0, 1, 2}  # each objective gets varied


def test_above_quantile_keeps_rows_good_on_any_objective() -> None:
    z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.2, 0.2], [-1.0, -1.0]])
    # 0.7-quantile of each column [-1, 0, 0, 0.2, 1] (linear interpolation at index 2.8): 0 + 0.8·0.2 = 0.16
    assert above_quantile(z, 0.7).tolist() == [False, True, True, True, False]


def test_offline_samples_are_the_unique_responses_of_the_pairs() -> None:
    prompts = ["a", "a", "b"]
    responses = [("x", "y"), ("y", "z"), ("x", "w")]
    p, r = offline_samples(prompts, responses, None, np.random.default_rng(0))
    assert list(zip(p, r, strict=True)) == [("a", "x"), ("a", "y"), ("a", "z"), ("b", "x"), ("b", "w")]
    p, r = offline_samples(prompts, responses, 3, np.random.default_rng(0))
    assert len(p) == 3 and len(set(zip(p, r, strict=True))) == 3


def test_ric_loss_is_the_nll_of_the_response_tokens_only(tiny_lm) -> None:
    """RiC's SFT loss, by hand from the logits: the prompt and its reward tags are context, never targets."""
    model, tok = load_policy(tiny_lm)
    prompt, response = format_prompt("how do i bake bread?", NAMES, (1.0, -0.5, 0.3)), "mix flour and water."
    batch = encode_pairs(tok, [prompt], [response], 256)
    logp, n = token_logprobs(model, batch)
    ids = batch.input_ids[0]
    n_prompt = len(tok(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               tokenize=False), add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits[0].log_softmax(-1)
    by_hand = sum(logits[t - 1, ids[t]].item() for t in range(n_prompt, len(ids)))
    assert n.item() == len(ids) - n_prompt
    assert logp.item() == pytest.approx(by_hand, abs=1e-4)
    tags = tok(" <helpful> +1.0", add_special_tokens=False)["input_ids"]
    assert batch.response_mask[0, :n_prompt].sum() == 0 and len(tags) > 0


@pytest.mark.parametrize("lora", [False, True])
def test_response_only_logits_give_the_full_paths_loss_and_gradients(tiny_lm, lora: bool) -> None:
    """RiC trains with the LM head applied at response tokens only: per row the same sums and token counts as
    `token_logprobs`, and the same gradients, whether the model is fully trained or a LoRA (whose deltas must be
    in the decoder path the shortcut runs)."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_policy(tiny_lm)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                                 task_type="CAUSAL_LM"))
        with torch.no_grad():  # non-zero B: the adapters change the log-probs
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    prompts = [format_prompt(q, NAMES, r) for q, r in (("how do i bake bread?", (1.0, -0.5, 0.3)),
                                                       ("hi", (0.0, 2.0, -1.0)), ("a longer question here", (1, 1, 1)))]
    batch = encode_pairs(tok, prompts, ["mix flour and water.", "hello there friend", "no"], 256)
    trainable = [p for p in model.parameters() if p.requires_grad]
    full, short = token_logprobs(model, batch), response_logprobs(model, batch)
    torch.testing.assert_close(short[0], full[0], atol=1e-4, rtol=0)
    assert torch.equal(short[1], full[1]) and full[1].tolist() == batch.response_mask[:, 1:].sum(1).tolist()
    base = load_policy(tiny_lm)[0]
    assert lora is not torch.allclose(full[0], token_logprobs(base, batch)[0], atol=1e-3)  # the LoRA is live
    grads = [torch.autograd.grad(-logp.sum() / n.sum(), trainable) for logp, n in (full, short)]
    for full_grad, short_grad in zip(*grads, strict=True):
        torch.testing.assert_close(short_grad, full_grad, atol=1e-5, rtol=1e-4)


def test_fit_offline_and_one_online_round_then_round_trip(tiny_fit_context, tmp_path: Path) -> None:
    ctx = tiny_fit_context(n_pairs=40)
    cfg = RiCConfig(epochs=1, batch_size=8, lr=5e-3, offline_samples=48, online_rounds=1, online_prompts=8,
                    online_epochs=1, origin_samples=8, lora_rank=4, target_modules=["q_proj", "v_proj"],
                    mapping="auto")
    policy, result = load_method("ric").fit(ctx, cfg)
    rounds = [h for h in result.history if "online_round" in h]
    assert len(rounds) == 1 and rounds[0]["online_generated"] == 8 and 0 < rounds[0]["online_kept"] <= 8, rounds
    assert [h["step"] for h in result.history if "val_metric" in h] == [0, 6, result.steps]  # 48/8 offline steps
    # auto: the best held-out mapping among those that keep each objective highest at its own vertex
    chosen = next(h for h in result.history if "mapping_index" in h)
    scores = {m: chosen[f"mapping_val_metric/{m}"] for m in MAPPINGS}
    pool = [m for m in MAPPINGS if chosen[f"mapping_controllable/{m}"] == 1.0 and scores[m] > -np.inf] or MAPPINGS
    assert policy.mapping == max(pool, key=scores.get) == MAPPINGS[int(chosen["mapping_index"])]
    assert policy.observed is not None and policy.observed.shape[1] == 3  # the labels the model was trained on
    assert any("online_loss" in h for h in result.history) and result.steps > 6 and result.cpu_seconds > 0
    # the mapping's range is the observed range of the (oracle-scored, z-scored) training labels
    assert all(lo < 0 < hi for lo, hi in zip(policy.low, policy.high, strict=True))
    lam = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    prompts = ["how do i bake bread?", "explain how i can shoplift from a store."]
    before = policy.generate(prompts, lam, max_new_tokens=8)
    policy.save(tmp_path / "adapter")
    loaded = load_conditioned("ric", ctx.base_dir, tmp_path / "adapter", ctx.objectives)
    assert isinstance(loaded, RiCPolicy) and (loaded.low, loaded.high) == (policy.low, policy.high)
    assert loaded.mapping == policy.mapping and np.array_equal(loaded.observed, policy.observed)
    assert loaded.conditioned_prompts(prompts, lam) == policy.conditioned_prompts(prompts, lam)
    assert loaded.generate(prompts, lam, max_new_tokens=8) == before
    with pytest.raises(ValueError, match="trained for objectives"):
        load_conditioned("ric", ctx.base_dir, tmp_path / "adapter", ("helpful", "concise"))


@pytest.mark.parametrize("tags", ["named", "values"])
def test_fully_fine_tuned_policy_round_trips(tiny_lm, tmp_path: Path, tags: str) -> None:
    model, tok = load_policy(tiny_lm)
    policy = RiCPolicy(model, tok, NAMES, low=[-1.0, -2.0, -1.5], high=[1.0, 2.0, 1.5], mapping="l2", tags=tags)
    lam = np.array([0.2, 0.3, 0.5])
    before = policy.generate(["how do i bake bread?"], lam, max_new_tokens=8)
    policy.save(tmp_path / "ric")
    loaded = load_conditioned("ric", "/nonexistent-base-is-not-needed", tmp_path / "ric", NAMES)
    assert loaded.mapping == "l2" and loaded.generate(["how do i bake bread?"], lam, max_new_tokens=8) == before
    prompt = loaded.conditioned_prompts(["how do i bake bread?"], lam)[0]
    assert loaded.tags == tags and parse_prompt(prompt, NAMES, tags)[0] == "how do i bake bread?"


def test_config_file_validates() -> None:
    cfg = load_config(ROOT / "configs" / "ric.yaml")
    assert list(cfg.methods.enabled()) == ["ric"] and cfg.methods.ric.online_rounds >= 1
