"""The PPO reward worker on `pareto.models.scorer`: training columns by `ppo.reward_sources`, evaluation by the run's
saved `SourcedReward` (the fronts' "reward_model" scorer, normaliser included).

A tiny GPT2ForSequenceClassification and a three-output LlamaForSequenceClassification, built and saved here (no
hub), score some objectives; a learned MiniLM head (random weights), the length rule and the task's oracle score the
others, in one reward vector [B, K]. Expected values come from the models' own forward on each unpadded input
(tests.test_hf_reward.expected_scores) or from the scorer the DPO methods' fronts use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from pareto.config import ConfigError, config_from_dict
from pareto.data.task import build_task
from pareto.distributed.bundle import pack
from pareto.distributed.ppo.group import training_sources
from pareto.distributed.ppo.workers import RewardWorker
from pareto.models.scorer import SourcedReward, length_score
from tests.test_hf_reward import expected_scores, gpt2_rm, llama_rm  # noqa: F401 (fixtures)

CFG = config_from_dict({"objectives": ["helpful", "harmless", "concise"], "methods": {"panacea_ppo": {}}})
TASK = build_task(CFG)  # tiny-hh: the oracle knows its prompts
PROMPTS = TASK.prompts["train"][:4]
RESPONSES = ["Mix flour and yeast, knead the dough well, let it rise and bake it until golden.",
             "I can't help with that.", "Bread.", "hello there, here is a list of steps you can follow"]


def cfg_with(gpt2: Path, llama: Path, sources: dict | None = None, rules: dict | None = None):
    return config_from_dict({
        "objectives": ["helpful", "harmless", "concise"], "methods": {"panacea_ppo": {}},
        "reward_model": {"rules": rules or {}, "hf": [
            {"model": str(gpt2), "objectives": ["harmless"], "template": "pair", "dtype": "float32"},
            {"model": str(llama), "objectives": ["helpful"], "outputs": ["helpfulness"], "template": "chat",
             "dtype": "float32"}]},
        "ppo": {"reward_sources": sources or {}},
    })


def worker(cfg, reward=None, oracle=TASK.oracle) -> RewardWorker:
    return RewardWorker(reward, cfg.objectives, training_sources(cfg), oracle, cfg.seed, threads=1,
                        hf=cfg.reward_model.hf, device="cpu")


def hf_columns(gpt2: Path, llama: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(helpful by the llama model's 'helpfulness' logit on the chat template, harmless by GPT-2 on the pair)."""
    tok = AutoTokenizer.from_pretrained(llama)
    chat = [(tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False), None) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    helpful = expected_scores(llama, chat, chat=True)[:, 0]
    harmless = expected_scores(gpt2, list(zip(PROMPTS, RESPONSES, strict=True)))[:, 0]
    return helpful, harmless


def test_training_sources_are_the_reward_models_overridden_by_ppo(gpt2_rm: Path, llama_rm: Path) -> None:  # noqa: F811
    # hf where a reward_model.hf entry scores the objective, a reward_model.rules rule, else a learned head ...
    assert training_sources(cfg_with(gpt2_rm, llama_rm)) == {"helpful": "hf", "harmless": "hf", "concise": "learned"}
    assert training_sources(cfg_with(gpt2_rm, llama_rm, rules={"concise": "length"}))["concise"] == "length"
    # ... and ppo.reward_sources has the last word
    assert training_sources(cfg_with(gpt2_rm, llama_rm, {"helpful": "oracle", "concise": "length"})) == {
        "helpful": "oracle", "harmless": "hf", "concise": "length"}


def test_hf_reward_models_and_rules_score_one_vector(gpt2_rm: Path, llama_rm: Path) -> None:  # noqa: F811
    cfg = cfg_with(gpt2_rm, llama_rm, {"concise": "length"})
    rw = worker(cfg)
    reward = rw.score(PROMPTS, RESPONSES)["reward"]
    assert reward.shape == (4, 3) and reward.dtype == torch.float32
    helpful, harmless = hf_columns(gpt2_rm, llama_rm)
    torch.testing.assert_close(reward[:, 0], helpful, atol=1e-5, rtol=1e-4)  # raw scores: PPO whitens later
    torch.testing.assert_close(reward[:, 1], harmless, atol=1e-5, rtol=1e-4)
    assert reward[:, 2].tolist() == length_score(RESPONSES).tolist() == [-16.0, -5.0, -1.0, -11.0]
    # evaluation without the run's reward model: the oracle only (no "reward_model" scorer to score a front with)
    assert rw.scorer_names() == ["oracle"] and set(rw.evaluate(PROMPTS, RESPONSES)) == {"oracle"}
    assert worker(cfg, oracle=None).scorer_names() == []


def test_hf_and_oracle_sources_mix_and_only_the_needed_models_load(gpt2_rm: Path, llama_rm: Path) -> None:  # noqa: F811
    cfg = cfg_with(gpt2_rm, llama_rm, {"helpful": "oracle", "concise": "oracle"})
    rw = worker(cfg)
    assert rw.train.sources == {"harmless": "hf"} and len(rw.train.hf_specs) == 1  # the llama model is not loaded
    reward = rw.score(PROMPTS, RESPONSES)["reward"]
    oracle = TASK.synthetic.oracle_scores(PROMPTS, RESPONSES)  # tiny-hh columns: helpful, harmless, concise
    assert torch.equal(reward[:, [0, 2]], oracle[:, [0, 2]].float())
    torch.testing.assert_close(reward[:, 1], hf_columns(gpt2_rm, llama_rm)[1], atol=1e-5, rtol=1e-4)
    assert torch.equal(rw.evaluate(PROMPTS, RESPONSES)["oracle"], oracle)
    with pytest.raises(ValueError, match="reward source 'oracle' needs a synthetic task"):
        worker(cfg, oracle=None)


def test_evaluation_scores_with_the_runs_saved_reward_model(gpt2_rm: Path, llama_rm: Path,  # noqa: F811
                                                           tmp_path: Path) -> None:
    """The reward bundle the pipeline passes is a saved SourcedReward: the front's "reward_model" scores are exactly
    what that scorer gives (its frozen normaliser), bytes or by path; training reuses its reward models."""
    from pareto.models.reward import LearnedVectorReward, MultiHeadRewardModel, TextEncoder

    cfg = cfg_with(gpt2_rm, llama_rm, rules={"concise": "length"})
    encoder = TextEncoder()
    torch.manual_seed(0)
    learned = LearnedVectorReward(encoder, MultiHeadRewardModel(3, embed_dim=encoder.dim, hidden=(8,)),
                                  cfg.objectives)
    saved = SourcedReward(cfg.objectives, cfg.reward_sources(), learned, cfg.reward_model.hf)
    saved.fit_normalizer(PROMPTS * 2, RESPONSES + RESPONSES[::-1])
    assert saved.normalizer.count == 8
    saved.save(tmp_path / "reward")
    want = SourcedReward.load(tmp_path / "reward")(PROMPTS, RESPONSES)  # how every DPO front is scored

    for reward in (pack(tmp_path / "reward"), str(tmp_path / "reward")):
        rw = worker(cfg, reward)
        assert rw.scorer_names() == ["oracle", "reward_model"]
        got = rw.evaluate(PROMPTS, RESPONSES)
        torch.testing.assert_close(got["reward_model"], want, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(got["reward_model"], rw.scorer.raw(PROMPTS, RESPONSES))  # normalised
        # the same sources for training: the run's scorer itself (one copy of each model), raw columns
        assert rw.train is rw.scorer
        torch.testing.assert_close(rw.score(PROMPTS, RESPONSES)["reward"], rw.scorer.raw(PROMPTS, RESPONSES))

    # ppo.reward_sources asks for other sources: a training scorer of its own, with the run's saved learned heads
    # (saved beside the scorer even where the scorer itself takes no objective from them)
    over = cfg_with(gpt2_rm, llama_rm, {"helpful": "learned", "concise": "oracle"}, rules={"concise": "length"})
    rw = worker(over, pack(tmp_path / "reward"))
    assert rw.scorer.learned is None and rw.train is not rw.scorer
    assert rw.train.sources == {"helpful": "learned", "harmless": "hf"}
    reward = rw.score(PROMPTS, RESPONSES)["reward"]
    torch.testing.assert_close(reward[:, 0], learned.raw(PROMPTS, RESPONSES)[:, 0])
    torch.testing.assert_close(reward[:, 1], hf_columns(gpt2_rm, llama_rm)[1], atol=1e-5, rtol=1e-4)
    assert torch.equal(reward[:, 2], TASK.synthetic.oracle_scores(PROMPTS, RESPONSES)[:, 2])
    torch.testing.assert_close(rw.evaluate(PROMPTS, RESPONSES)["reward_model"], want, atol=1e-5, rtol=1e-4)


def test_learned_source_without_a_reward_model_is_an_error(gpt2_rm: Path, llama_rm: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="objectives with source 'learned' need a trained reward model"):
        worker(cfg_with(gpt2_rm, llama_rm))  # concise: learned, and no reward bundle


def test_hf_source_without_a_reward_model_is_a_one_line_config_error(gpt2_rm: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=r"ppo.reward_sources.helpful: 'helpful' has source hf but no "
                                          r"reward_model.hf entry scores it"):
        config_from_dict({"objectives": ["helpful", "concise"], "methods": {"panacea_ppo": {}},
                          "reward_model": {"hf": [{"model": str(gpt2_rm), "objectives": ["concise"]}]},
                          "ppo": {"reward_sources": {"helpful": "hf"}}})
