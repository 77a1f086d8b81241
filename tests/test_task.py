"""The one task shape the stages read: chat prompts per turn, a dataset's splits, the stated length rule."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pareto.config import config_from_dict
from pareto.data.chat import drop_leading_turns, from_messages, last_user_turn, to_messages
from pareto.data.task import build_task, context_budget, fit_to_context
from pareto.models.policy import prompt_text, response_text, train_tokenizer

DIALOGUE = ("\n\nHuman: I want to bake bread.\n\nAssistant: Great, what kind?"
            "\n\nHuman: Sourdough, how do I start?\n\nAssistant:")


def test_an_hh_dialogue_becomes_one_message_per_turn() -> None:
    assert to_messages(DIALOGUE) == [
        {"role": "user", "content": "I want to bake bread."},
        {"role": "assistant", "content": "Great, what kind?"},
        {"role": "user", "content": "Sourdough, how do I start?"}]
    assert to_messages("How do I bake bread?") == [{"role": "user", "content": "How do I bake bread?"}]
    assert from_messages(to_messages(DIALOGUE)) == DIALOGUE
    assert last_user_turn(DIALOGUE) == "Sourdough, how do I start?"
    # dropping leading turns keeps a conversation that starts with the user
    assert to_messages(drop_leading_turns(DIALOGUE, 2)) == [{"role": "user", "content": "Sourdough, how do I start?"}]


def test_the_chat_template_renders_each_turn() -> None:
    tok = train_tokenizer(["User: a b\nAssistant: c d"] * 4, 300)
    assert prompt_text(tok, DIALOGUE) == ("User: I want to bake bread.\nAssistant: Great, what kind?<eos>\n"
                                          "User: Sourdough, how do I start?\nAssistant:")
    # the tiny LM's reply frame is unchanged by reading it off the template: " reply<eos>"
    assert response_text(tok, " Use a starter. ") == " Use a starter.<eos>"


def _hh_folder(root: Path, rows_per_subset: int = 30) -> Path:
    """A local HH-RLHF folder in the hub layout, with long dialogues for some rows."""
    for subset in ("helpful-base", "harmless-base"):
        (root / subset).mkdir(parents=True)
        rows = []
        for i in range(rows_per_subset):
            turns = "".join(f"\n\nHuman: earlier question {j} about {subset}\n\nAssistant: earlier answer {j}"
                            for j in range(i % 4 * 6))
            long = "please tell me " * 20 if i % 10 == 9 else ""  # a last turn no budget of the tests fits
            prompt = f"{turns}\n\nHuman: {long}question {i} of {subset}?\n\nAssistant:"
            rows.append({"chosen": f"{prompt} good answer {i} {subset}",
                         "rejected": f"{prompt} bad answer {i} {subset} " + "x " * i})
        with gzip.open(root / subset / "test.jsonl.gz", "wt") as f:
            f.write("\n".join(json.dumps(r) for r in rows))
    return root


def _cfg(path: Path, **model) -> object:
    return config_from_dict({
        "name": "t", "objectives": ["helpful", "harmless"],
        "task": {"name": "hh", "dataset": {"format": "hh_rlhf", "path": str(path),
                                           "labels": {"helpful": "helpful-base", "harmless": "harmless-base"},
                                           "splits": {"train": "test[:60%]", "val": "test[60%:80%]",
                                                      "eval": "test[80%:]"}}},
        "model": {"base": "tiny", **model},
        "evaluation": {"scorer": "reward_model", "reference_point": "base"}})


def test_a_dataset_task_has_its_splits_and_one_label_per_subset(tmp_path: Path) -> None:
    task = build_task(_cfg(_hh_folder(tmp_path)))
    assert task.oracle is None and not task.is_synthetic
    assert len(task.pairs["train"]) == 36 and len(task.pairs["val"]) == 12
    labelled = {(p.better[0] >= 0, p.better[1] >= 0) for p in task.pairs["train"]}
    assert labelled == {(True, False), (False, True)}  # helpful-base labels helpful only, harmless-base harmless
    # eval prompts mix both subsets in their first few (a fixed shuffle, the same for every run seed)
    first = task.prompts["eval"][:6]
    assert any("helpful-base" in p for p in first) and any("harmless-base" in p for p in first)
    assert build_task(_cfg(_hh_folder(tmp_path / "again"))).prompts["eval"] == task.prompts["eval"]


def test_the_length_rule_drops_turns_cuts_replies_and_counts_both(tmp_path: Path) -> None:
    cfg = _cfg(_hh_folder(tmp_path))
    task = build_task(cfg)
    tok = train_tokenizer([p.prompt + p.response_0 for p in task.pairs["train"]], 300)

    def n(text: str) -> int:
        return len(tok(prompt_text(tok, text), add_special_tokens=False)["input_ids"])

    limit = 40
    fitted = fit_to_context(task, tok, max_prompt_tokens=limit, max_response_tokens=8)
    long_prompts = {p.prompt for p in task.pairs["train"] if n(p.prompt) > limit}
    assert long_prompts, "the fixture must have prompts over the budget"
    assert all(n(p.prompt) <= limit for p in fitted.pairs["train"])
    assert all(n(p) <= limit for p in fitted.prompts["eval"])
    # whole leading turns were dropped: each fitted prompt is the end of its original, ending on the same question
    originals = {p.response_0: p.prompt for p in task.pairs["train"]}
    for pair in fitted.pairs["train"]:
        original = originals[pair.response_0]
        assert to_messages(original)[-1] == to_messages(pair.prompt)[-1]
        assert to_messages(original)[-len(to_messages(pair.prompt)):] == to_messages(pair.prompt)
    shortened = sum(1 for p in fitted.pairs["train"] if p.prompt != originals[p.response_0])
    st = fitted.stats
    assert st["prompts_shortened"] >= shortened > 0
    assert st["train_pairs_dropped"] == len(task.pairs["train"]) - len(fitted.pairs["train"])
    # every pair whose longest reply overflows prompt + 8 tokens is counted as cut
    budget = limit + 8

    def tokens(text: str, fn) -> int:
        return len(tok(fn(tok, text), add_special_tokens=False)["input_ids"])

    over = sum(tokens(p.prompt, prompt_text) + max(tokens(p.response_0, response_text),
                                                    tokens(p.response_1, response_text)) > budget
               for p in fitted.pairs["train"])
    assert st["train_responses_truncated"] == over > 0
    # long_responses: drop keeps exactly the training pairs that fit, counts the rest, cuts nothing
    dropping = fit_to_context(task, tok, max_prompt_tokens=limit, max_response_tokens=8, long_responses="drop")
    assert dropping.stats["train_pairs_dropped_long"] == over and dropping.stats["train_responses_truncated"] == 0
    assert [p for p in fitted.pairs["train"] if tokens(p.prompt, prompt_text) + max(
        tokens(p.response_0, response_text), tokens(p.response_1, response_text)) <= budget] == dropping.pairs["train"]
    assert dropping.pairs["val"] == fitted.pairs["val"] and dropping.prompts == fitted.prompts  # training pairs only


def test_a_prompt_whose_last_turn_cannot_fit_is_dropped_and_counted(tmp_path: Path) -> None:
    task = build_task(_cfg(_hh_folder(tmp_path)))
    tok = train_tokenizer([p.prompt for p in task.pairs["train"]], 300)
    fitted = fit_to_context(task, tok, max_prompt_tokens=40, max_response_tokens=8)
    dropped = [p for p in task.pairs["train"] if "please tell me" in p.prompt]
    assert dropped and fitted.stats["train_pairs_dropped"] == len(dropped)
    assert not any("please tell me" in p.prompt for p in fitted.pairs["train"])
    from pareto.data.loaders import DatasetError

    with pytest.raises(DatasetError, match="no training pair fits model.max_prompt_tokens=6"):
        fit_to_context(task, tok, max_prompt_tokens=6, max_response_tokens=8)


def test_the_budget_comes_from_the_config_or_the_context(tmp_path: Path) -> None:
    folder = _hh_folder(tmp_path)
    assert context_budget(_cfg(folder), 2048) == (1536, 512)
    assert context_budget(_cfg(folder, max_prompt_tokens=100, max_response_tokens=20), 2048) == (100, 20)
    from pareto.config import ConfigError

    with pytest.raises(ConfigError, match="exceeds the model's context of 64 tokens"):
        context_budget(_cfg(folder, max_prompt_tokens=100, max_response_tokens=20), 64)


def test_the_embedded_task_keeps_its_pairs(tmp_path: Path) -> None:
    """tiny-hh through the task shape: the same pairs and prompts the stages read before (fronts bit-identical)."""
    from pareto.data import load_task

    cfg = config_from_dict({"name": "q"})
    task = build_task(cfg)
    raw = load_task("tiny-hh", seed=0)
    assert task.pairs["train"] == raw.preference_pairs("train", 4, 0.1, seed=0)
    assert task.prompts["eval"] == [p.text for p in raw.prompts("eval")]
    assert task.oracle is not None and task.is_synthetic
