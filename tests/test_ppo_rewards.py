"""The PPO reward worker with Hugging Face reward models as a reward source (`ppo.reward_sources: hf`).

A tiny GPT2ForSequenceClassification and a three-output LlamaForSequenceClassification, built and saved here (no
hub), score some objectives; the length rule and the task's oracle score the others, in one reward vector [B, K].
Expected values come from the models' own forward on each unpadded input (tests.test_hf_reward.expected_scores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pareto.config import ConfigError, config_from_dict
from pareto.data import load_task
from pareto.distributed.ppo.workers import RewardWorker, length_score, reward_sources
from tests.test_hf_reward import expected_scores, gpt2_rm, llama_rm  # noqa: F401 (fixtures)

PROMPTS = [p.text for p in load_task("tiny-hh", seed=0).prompts("train")[:4]]  # the oracle knows only these
RESPONSES = ["Mix flour and yeast, knead the dough well, let it rise and bake it until golden.",
             "I can't help with that.", "Bread.", "hello there, here is a list of steps you can follow"]


def cfg_with(gpt2: Path, llama: Path, sources: dict | None = None):
    return config_from_dict({
        "objectives": ["helpful", "harmless", "concise"], "methods": {"panacea_ppo": {}},
        "reward_model": {"hf": [
            {"model": str(gpt2), "objectives": ["harmless"], "template": "pair", "dtype": "float32"},
            {"model": str(llama), "objectives": ["helpful"], "outputs": ["helpfulness"], "template": "chat",
             "dtype": "float32"}]},
        "ppo": {"reward_sources": sources or {}},
    })


def worker(cfg) -> RewardWorker:
    return RewardWorker(None, cfg.objectives, reward_sources(cfg), cfg.task.name, cfg.seed, threads=1,
                        hf=cfg.reward_model.hf, device="cpu")


def test_hf_reward_models_and_rules_score_one_vector(gpt2_rm: Path, llama_rm: Path) -> None:  # noqa: F811
    cfg = cfg_with(gpt2_rm, llama_rm, {"concise": "length"})
    # objectives a reward_model.hf entry scores default to hf; the others to learned, unless set
    assert reward_sources(cfg) == {"helpful": "hf", "harmless": "hf", "concise": "length"}
    rw = worker(cfg)
    reward = rw.score(PROMPTS, RESPONSES)["reward"]
    assert reward.shape == (4, 3) and reward.dtype == torch.float32
    harmless = expected_scores(gpt2_rm, list(zip(PROMPTS, RESPONSES, strict=True)))[:, 0]
    tok = rw.hf.models[1].tokenizer
    chat = [(tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False), None) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    helpful = expected_scores(llama_rm, chat, chat=True)[:, 0]  # output "helpfulness" = logit 0
    torch.testing.assert_close(reward[:, 0], helpful, atol=1e-5, rtol=1e-4)  # raw scores: PPO whitens later
    torch.testing.assert_close(reward[:, 1], harmless, atol=1e-5, rtol=1e-4)
    assert reward[:, 2].tolist() == length_score(RESPONSES).tolist() == [-16.0, -5.0, -1.0, -11.0]
    # evaluation: the HF models' raw scores where they are the source; no learned model, so nothing for concise
    assert "reward_model" not in rw.evaluate(PROMPTS, RESPONSES)


def test_hf_and_oracle_sources_mix_and_evaluate(gpt2_rm: Path, llama_rm: Path) -> None:  # noqa: F811
    cfg = cfg_with(gpt2_rm, llama_rm, {"helpful": "oracle", "concise": "oracle"})
    rw = worker(cfg)
    assert [type(m.model).__name__ for m in rw.hf.models] == ["GPT2ForSequenceClassification"]  # llama not loaded
    reward = rw.score(PROMPTS, RESPONSES)["reward"]
    oracle = rw.task.oracle_scores(PROMPTS, RESPONSES)  # tiny-hh columns: helpful, harmless, concise
    assert torch.equal(reward[:, [0, 2]], oracle[:, [0, 2]].float())
    harmless = expected_scores(gpt2_rm, list(zip(PROMPTS, RESPONSES, strict=True)))[:, 0]
    torch.testing.assert_close(reward[:, 1], harmless, atol=1e-5, rtol=1e-4)
    assert set(rw.evaluate(PROMPTS, RESPONSES)) == {"oracle"}


def test_hf_source_without_a_reward_model_is_a_one_line_config_error(gpt2_rm: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match=r"ppo.reward_sources.helpful: 'helpful' has source hf but no "
                                          r"reward_model.hf entry scores it"):
        config_from_dict({"objectives": ["helpful", "concise"], "methods": {"panacea_ppo": {}},
                          "reward_model": {"hf": [{"model": str(gpt2_rm), "objectives": ["concise"]}]},
                          "ppo": {"reward_sources": {"helpful": "hf"}}})
