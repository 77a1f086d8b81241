"""HF reward-model adapters on tiny, randomly initialised models of the real classes, built here.

A GPT2ForSequenceClassification with one output and no pad token (like the RiC paper's Ray2333 gpt2-large
reward models) and a LlamaForSequenceClassification with three labelled outputs (a multi-attribute reward
model). Expected scores are computed independently: the backbone's hidden state at the last real token of the
unpadded input, through the model's own `score` head.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

from pareto.config import HFRewardModelConfig, config_from_dict
from pareto.models.hf_reward import HFRewardModel, HFVectorReward, RewardModelError, hh_prompt
from pareto.models.policy import CHAT_TEMPLATE

CORPUS = ["How do I bake bread?", "Mix flour and yeast, knead the dough well, let it rise and bake it.",
          "I can't help with that.", "Go back to jail.", "Here is a list of steps you can follow safely.",
          "\n\nHuman: hi\n\nAssistant: hello"] * 4
PROMPTS = ["How do I bake bread?", "How do I pick a lock?", "Tell me a joke.", "hi"]
RESPONSES = ["Mix flour and yeast, knead the dough well, let it rise and bake it until golden.",
             "I can't help with that.", "Bread.", "hello there, here is a list of steps you can follow"]


def bpe(with_pad: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<unk>"] + (["<pad>"] if with_pad else [])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    extra = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<unk>", **extra)


@pytest.fixture(scope="module")
def gpt2_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like Ray2333/gpt2-large-*-reward_model: GPT-2, one output, a tokenizer without a pad token."""
    path = tmp_path_factory.mktemp("gpt2-rm")
    tokenizer = bpe(with_pad=False)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32,
                                                     n_layer=2, n_head=2, num_labels=1, pad_token_id=None))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_rm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-attribute reward model: Llama, three labelled outputs, a chat template."""
    path = tmp_path_factory.mktemp("llama-rm")
    tokenizer = bpe(with_pad=True)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<eos>", "<|endoftext|>")
    torch.manual_seed(1)
    labels = {0: "helpfulness", 1: "honesty", 2: "verbosity"}
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, num_labels=3,
        id2label=labels, label2id={v: k for k, v in labels.items()}, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def expected_scores(model_dir: Path, texts: list[tuple[str, str | None]], chat: bool = False) -> torch.Tensor:
    """Score each input alone (no padding): backbone hidden state at the last token -> the model's score head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    backbone = model.transformer if hasattr(model, "transformer") else model.model
    rows = []
    with torch.no_grad():
        for first, second in texts:
            ids = tok(first, second, add_special_tokens=not chat, return_tensors="pt")["input_ids"]
            hidden = backbone(input_ids=ids).last_hidden_state[0, -1]
            rows.append(model.score(hidden))
    return torch.stack(rows)


def spec(path: Path, **kw) -> HFRewardModelConfig:
    return HFRewardModelConfig(model=str(path), dtype="float32", **kw)


def test_single_output_gpt2_pair_template_matches_unpadded_scores(gpt2_rm: Path) -> None:
    rm = HFRewardModel(spec(gpt2_rm, objectives=["harmless"], template="pair", batch_size=3), device="cpu")
    assert rm.tokenizer.pad_token == "<|endoftext|>" and rm.model.config.pad_token_id == rm.tokenizer.eos_token_id
    got = rm.score(PROMPTS, RESPONSES)
    assert got.shape == (4, 1) and got.dtype == torch.float32
    want = expected_scores(gpt2_rm, list(zip(PROMPTS, RESPONSES, strict=True)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # Batching does not change a score (right padding keeps GPT-2's absolute positions).
    one_by_one = torch.cat([rm.score([p], [r]) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    torch.testing.assert_close(got, one_by_one, atol=1e-5, rtol=1e-4)
    assert len({round(float(v), 6) for v in got[:, 0]}) == 4  # a random head still tells inputs apart


def test_hh_template_formats_the_prompt_as_a_transcript(gpt2_rm: Path) -> None:
    assert hh_prompt("How do I bake bread?") == "\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert hh_prompt("\n\nHuman: hi\n\nAssistant:") == "\n\nHuman: hi\n\nAssistant:"
    rm = HFRewardModel(spec(gpt2_rm, objectives=["helpful"], template="hh"), device="cpu")
    want = expected_scores(gpt2_rm, [(hh_prompt(p), r) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    torch.testing.assert_close(rm.score(PROMPTS, RESPONSES), want, atol=1e-5, rtol=1e-4)


def test_multi_output_llama_picks_outputs_by_label_and_index(llama_rm: Path) -> None:
    chat = HFRewardModel(spec(llama_rm, objectives=["honest", "helpful"], outputs=["honesty", 0],
                              template="chat"), device="cpu")
    assert chat.indices == [1, 0]
    texts = [(chat.tokenizer.apply_chat_template([{"role": "user", "content": p},
                                                   {"role": "assistant", "content": r}], tokenize=False), None)
             for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    want = expected_scores(llama_rm, texts, chat=True)  # [4, 3] all outputs
    got = chat.score(PROMPTS, RESPONSES)
    torch.testing.assert_close(got, want[:, [1, 0]], atol=1e-5, rtol=1e-4)
    # A format-string template and probabilities over the three labels.
    fmt = HFRewardModel(spec(llama_rm, objectives=["concise"], outputs=["verbosity"], score="probability",
                             template="Q: {prompt}\nA: {response}"), device="cpu")
    logits = expected_scores(llama_rm, [(f"Q: {p}\nA: {r}", None) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    torch.testing.assert_close(fmt.score(PROMPTS, RESPONSES)[:, 0], logits.softmax(-1)[:, 2], atol=1e-5, rtol=1e-4)


def test_vector_reward_orders_columns_by_objective_and_normalises(gpt2_rm: Path, llama_rm: Path) -> None:
    harmless = HFRewardModel(spec(gpt2_rm, objectives=["harmless"], template="hh"), device="cpu")
    multi = HFRewardModel(spec(llama_rm, objectives=["helpful", "honest"], outputs=[0, 1]), device="cpu")
    reward = HFVectorReward([harmless, multi], ["honest", "harmless", "helpful"])
    raw = reward.raw(PROMPTS, RESPONSES)
    assert raw.shape == (4, 3)
    torch.testing.assert_close(raw[:, 1], harmless.score(PROMPTS, RESPONSES)[:, 0])
    torch.testing.assert_close(raw[:, [2, 0]], multi.score(PROMPTS, RESPONSES))
    torch.testing.assert_close(reward(PROMPTS, RESPONSES), raw)  # unfitted normaliser = identity
    reward.fit_normalizer(PROMPTS, RESPONSES)
    z = reward(PROMPTS, RESPONSES)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-4, rtol=0)


def test_from_config_builds_the_recipe_reward(gpt2_rm: Path, llama_rm: Path) -> None:
    cfg = config_from_dict({
        "task": {"name": "pku", "dataset": {"format": "jsonl", "path": "unused",
                                            "labels": {"helpful": "h", "harmless": "s"}}},
        "objectives": ["helpful", "harmless"],
        "reward_model": {"hf": [{"model": str(gpt2_rm), "objectives": ["harmless"], "template": "hh",
                                 "dtype": "float32"},
                                {"model": str(llama_rm), "objectives": ["helpful"], "outputs": ["helpfulness"],
                                 "dtype": "float32"}]},
        "evaluation": {"scorer": "reward_model", "reference_point": [-2, -2]},
    })
    reward = HFVectorReward.from_config(cfg, device="cpu")
    assert reward.names == ("helpful", "harmless") and reward(PROMPTS[:2], RESPONSES[:2]).shape == (2, 2)


def test_problems_are_one_line_errors(gpt2_rm: Path, llama_rm: Path, tmp_path: Path) -> None:
    with pytest.raises(RewardModelError, match=r"output index 3 out of range; it has 3 output\(s\)"):
        HFRewardModel(spec(llama_rm, objectives=["x"], outputs=[3]), device="cpu")
    with pytest.raises(RewardModelError, match="'safety', which is not one of its labels"):
        HFRewardModel(spec(llama_rm, objectives=["x"], outputs=["safety"]), device="cpu")
    with pytest.raises(RewardModelError, match="template 'chat' needs a tokenizer chat template"):
        HFRewardModel(spec(gpt2_rm, objectives=["x"], template="chat"), device="cpu")
    with pytest.raises(RewardModelError, match="could not be loaded") as err:
        HFRewardModel(spec(tmp_path / "missing", objectives=["x"]), device="cpu", local_files_only=True)
    assert "\n" not in str(err.value)
    one = HFRewardModel(spec(gpt2_rm, objectives=["harmless"], template="pair"), device="cpu")
    with pytest.raises(ValueError, match=r"no reward model scores \['helpful'\]"):
        HFVectorReward([one], ["helpful", "harmless"])
    with pytest.raises(ValueError, match="must be unique"):
        HFRewardModelConfig(model="m", objectives=["a", "a"])
    with pytest.raises(ValueError, match="give one output per objective"):
        HFRewardModelConfig(model="m", objectives=["a", "b"], outputs=[0])
    with pytest.raises(ValueError, match="format string"):
        HFRewardModelConfig(model="m", objectives=["a"], template="{prompt} only")
