"""Policy language models: the embedded tiny LM (built, SFT-trained and cached here) or a Hugging Face model.

The tiny LM is a real `LlamaForCausalLM` (head_dim 64, so vLLM can serve it) with a byte-level BPE tokenizer
trained on the task corpus. Everything is saved with `save_pretrained` (safetensors), so the same loading code
serves a local path, the cache, or a hub id.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from pareto.config import TinyModelConfig
from pareto.data.chat import to_messages
from pareto.io import atomic_dir
from pareto.models.device import model_device, place_model
from pareto.models.prefix import FrozenPrefix

# One template for the tiny LM; real chat models bring their own. vLLM's chat endpoint reads the same.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}<eos>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def prompt_text(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    """The model-facing text of a prompt (one user turn, or one message per turn of a dialogue), up to where the
    answer starts, rendered by the model's own chat template."""
    return tokenizer.apply_chat_template(to_messages(prompt), add_generation_prompt=True, tokenize=False)


def response_text(tokenizer: PreTrainedTokenizerFast, response: str) -> str:
    """The model-facing text of a reply: what the chat template writes after the generation prompt, ending with
    the end-of-turn token (" reply<eos>" for the tiny LM, "reply<|im_end|>" for ChatML models)."""
    before, after = _reply_frame(tokenizer.chat_template, tokenizer.eos_token)
    return before + response.strip() + after


_SENTINEL = "\x00reply\x00"


@functools.lru_cache(maxsize=32)
def _reply_frame(chat_template: str, eos_token: str) -> tuple[str, str]:
    """(text before, text after) a reply in an assistant turn, read off the template itself (trailing whitespace
    after the end-of-turn token dropped); a template that renders oddly falls back to the reply + eos."""
    from transformers.utils.chat_template_utils import render_jinja_template

    probe = [{"role": "user", "content": "x"}]
    try:
        head = render_jinja_template([probe], chat_template=chat_template, add_generation_prompt=True,
                                     eos_token=eos_token)[0][0]
        full = render_jinja_template([probe + [{"role": "assistant", "content": _SENTINEL}]],
                                     chat_template=chat_template, eos_token=eos_token)[0][0]
    except Exception:  # a template that needs more than messages: the plain frame still trains correctly
        return " ", eos_token
    if not full.startswith(head) or _SENTINEL not in full[len(head):]:
        return " ", eos_token
    before, after = full[len(head):].split(_SENTINEL, 1)
    after = after.rstrip()
    return before, after if after else eos_token


# ---- building the tiny LM ---------------------------------------------------------------------------------------
def train_tokenizer(corpus: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left; training builds its own right-padded batches
    return fast


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=cfg.max_length * 2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor   # [B, T] 1 on response tokens (the ones whose log-prob counts)

    def to(self, device: torch.device | str) -> Batch:
        """The batch on `device` (itself when it is already there)."""
        device = torch.device(device)
        if self.input_ids.device == device:
            return self
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def encode_pairs(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], responses: Sequence[str],
                 max_length: int) -> Batch:
    """Tokenise (prompt, response) into one right-padded batch with a mask over the response tokens."""
    return pad_batch(tokenizer, [encode_pair(tokenizer, p, r, max_length) for p, r in zip(prompts, responses,
                                                                                          strict=True)])


def encode_pair(tokenizer: PreTrainedTokenizerFast, prompt: str, response: str,
                max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response (truncated to max_length) and the response mask over them.

    Truncation is only a guard here: training data is checked against the context when it is loaded
    (`check_fits_context`, run by the pipeline before any compute), so a row never loses its response silently.
    """
    p = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    r = tokenizer(response_text(tokenizer, response), add_special_tokens=False)["input_ids"]
    return (p + r)[:max_length], ([0] * len(p) + [1] * len(r))[:max_length]


def pair_token_counts(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str],
                      responses: Sequence[str]) -> list[int]:
    """Tokens of each prompt + response exactly as `encode_pair` builds them (before any truncation)."""
    p = tokenizer([prompt_text(tokenizer, x) for x in prompts], add_special_tokens=False)["input_ids"]
    r = tokenizer([response_text(tokenizer, x) for x in responses], add_special_tokens=False)["input_ids"]
    return [len(a) + len(b) for a, b in zip(p, r, strict=True)]


def check_fits_context(tokenizer: PreTrainedTokenizerFast, rows: Sequence[tuple[str, str, str]], max_length: int,
                       field: str = "model.tiny.max_length") -> None:
    """Refuse training rows longer than the model's context, before any compute.

    `rows` are (where, prompt, response), `where` naming the row (e.g. "train pair 17 response_1"). `encode_pair`
    truncates to `max_length`, which would silently train on half a response (or on none of it); this check runs
    when the data is loaded instead and raises a one-line `DatasetError` naming the longest row, its token count,
    the limit and the fix.
    """
    from pareto.data.loaders import DatasetError

    if not rows:
        return
    counts = pair_token_counts(tokenizer, [r[1] for r in rows], [r[2] for r in rows])
    over = [i for i, n in enumerate(counts) if n > max_length]
    if not over:
        return
    worst = max(over, key=lambda i: counts[i])
    where, prompt, _ = rows[worst]
    start = " ".join(prompt.split())[:40]
    raise DatasetError(
        f"{where} (prompt starts {start!r}) is {counts[worst]} tokens, longer than "
        f"{field}={max_length} ({len(over)} of {len(rows)} rows are); raise {field} to at least {max(counts)}, "
        "or shorten or drop the long rows (they would be truncated silently)")


def pad_batch(tokenizer: PreTrainedTokenizerFast, encoded: Sequence[tuple[list[int], list[int]]]) -> Batch:
    """One right-padded Batch from `encode_pair` outputs."""
    rows, masks = [e[0] for e in encoded], [e[1] for e in encoded]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    response_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return Batch(input_ids, attention, response_mask)


def token_logprobs(model: PreTrainedModel, batch: Batch,
                   top: tuple[FrozenPrefix, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(response tokens) per row, and the number of response tokens per row (float32, on the model's
    device: the batch is moved there). Log-softmax runs in float32 whatever the weights or autocast dtype.

    `top` = (the model's frozen prefix, the hidden states entering its first trainable layer [B, T, hidden]): run
    only the layers from there on (`pareto.models.prefix`)."""
    batch = batch.to(model_device(model))
    if top is None:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    else:
        prefix, hidden = top
        with prefix.top_only():
            out = model(inputs_embeds=hidden, attention_mask=batch.attention_mask)
    logits = out.logits[:, :-1]
    targets = batch.input_ids[:, 1:]
    mask = batch.response_mask[:, 1:].to(torch.float32)  # not logits.dtype: bf16 counts are inexact above 256
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)


# config fields of models whose forward changes the LM head's output (Gemma 2's softcap, Cohere's and Granite's
# scales): `response_logprobs` cannot apply the head itself for them
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def response_logprobs(model: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` with the LM head applied at the response tokens only: the same sums (to float noise) for
    less compute where prompts are most of the tokens (the tiny LM's reward-tagged RiC prompts: 3/4 of them, the
    step 30 % cheaper). Models that post-process their logits take `token_logprobs`' full path."""
    if any(getattr(model.config, name, None) not in (None, 1.0) for name in _LOGIT_POSTPROCESSING):
        return token_logprobs(model, batch)
    batch = batch.to(model_device(model))
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    mask = batch.response_mask[:, 1:].bool()
    logits = model.get_output_embeddings()(hidden[:, :-1][mask]).float()  # [response tokens, vocab]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.input_ids[:, 1:][mask].unsqueeze(-1)).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(mask.shape[0], device=logp.device).index_add_(0, rows, logp), mask.sum(-1).float()


def sft_train(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, examples: Sequence[tuple[str, str]],
              epochs: int, lr: float, batch_size: int, max_length: int, seed: int,
              on_step: Callable[[int, float], None] | None = None, response_logits_only: bool = False) -> list[float]:
    """Supervised fine-tuning on responses only (prompt tokens are context, not targets), on the model's device
    (batches follow it; run it inside `Placement.context()` for autocast). `response_logits_only` computes the
    loss with `response_logprobs` (the same loss, cheaper; the base model's SFT keeps the full path, whose cached
    weights every recorded front was trained from)."""
    logprobs = response_logprobs if response_logits_only else token_logprobs
    rng = random.Random(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    order = list(range(len(examples)))
    steps_total = epochs * math.ceil(len(order) / batch_size)
    # OneCycleLR divides by zero when pct_start · total_steps == 1 (10 steps); only that case is nudged
    pct_start = 0.1 if steps_total != 10 else 0.15
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=lr, total_steps=steps_total, pct_start=pct_start)
    model.train()
    losses: list[float] = []
    bar = tqdm(total=steps_total, desc="sft", unit="step", mininterval=2.0)
    # tokenise every example once, not once per epoch (per-step tokenising was ~9% of SFT time, py-spy)
    encoded = [encode_pair(tokenizer, prompt, response, max_length) for prompt, response in examples]
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = pad_batch(tokenizer, [encoded[i] for i in order[start:start + batch_size]])
            logp, n = logprobs(model, batch)
            loss = -(logp.sum() / n.sum())
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            losses.append(loss.item())
            if on_step:
                on_step(len(losses), losses[-1])
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.eval()
    return losses


def matches_target(name: str, modules: Sequence[str]) -> bool:
    """Whether module `name` is one of `modules` as PEFT matches target_modules: the full name, or a name suffix."""
    return any(name == t or name.endswith("." + t) for t in modules)


def lora_targets(model: torch.nn.Module, modules: Sequence[str], top_layers: int | None = None) -> list[str]:
    """LoRA target modules: `modules` (name suffixes such as q_proj) everywhere, or only in the top `top_layers`
    decoder layers, as full module names (PEFT matches a name by suffix). Backward then stops below the lowest
    adapted layer, the lever that makes a 100M+ model trainable on CPUs."""
    if top_layers is None:
        return list(modules)
    layers = sorted({int(m.group(1)) for name, _ in model.named_modules()
                     if (m := re.search(r"\.layers\.(\d+)\.", name))})
    if not layers:
        raise ValueError("lora_layers needs a model with numbered decoder layers (.layers.<i>.); set it to null")
    keep = set(layers[-top_layers:])
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
            and matches_target(name, modules)
            and (m := re.search(r"\.layers\.(\d+)\.", name)) and int(m.group(1)) in keep]


# ---- loading and saving -----------------------------------------------------------------------------------------
def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """save_pretrained (safetensors) atomically: a kill never leaves half a model."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    """The tokenizer of a local directory or a Hugging Face id, set up as `load_policy` uses it (cheap: no weights)."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_policy(name_or_path: str | Path, dtype: str = "float32", device: torch.device | str = "cpu",
                gradient_checkpointing: bool = False,
                trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A causal LM and its tokenizer from a local directory or a Hugging Face id (offline: from the local cache).

    `dtype` is the weights' dtype (autocast is separate: `Placement.context()`); the model is moved to `device`
    and, with `gradient_checkpointing`, recomputes each decoder layer's activations in backward (non-reentrant:
    LoRA/PEFT adapters added afterwards get their gradients). Returned in eval mode.
    """
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=getattr(torch, dtype),
                                                 trust_remote_code=trust_remote_code)
    place_model(model, device, gradient_checkpointing)
    model.eval()
    return model, tokenizer


# ---- generation -------------------------------------------------------------------------------------------------
def hf_repetition_penalty(repetition_penalty: float) -> float | None:
    """HF's argument: None (no logits processor at all) for 1.0, so unpenalised decoding is bit-identical."""
    return None if repetition_penalty == 1.0 else float(repetition_penalty)


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str],
             max_new_tokens: int = 48, do_sample: bool = False, temperature: float = 1.0,
             seed: int | None = None, repetition_penalty: float = 1.0) -> list[str]:
    """Batched generation (left padding) on the model's device, under whatever autocast the caller set; returns the
    decoded responses only."""
    if not prompts:
        return []
    if seed is not None:
        torch.manual_seed(seed)
    texts = [prompt_text(tokenizer, p) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model_device(model))
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
        temperature=temperature if do_sample else None, top_p=None, top_k=None,
        repetition_penalty=hf_repetition_penalty(repetition_penalty),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    new_tokens = out[:, enc["input_ids"].shape[1]:].cpu()
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def repetition_rate(texts: Sequence[str], n: int = 3, max_count: int = 2) -> float:
    """Share of texts in which some word n-gram occurs more than `max_count` times (degenerate loops)."""
    if not texts:
        return 0.0
    bad = 0
    for text in texts:
        words = text.split()
        counts: dict[tuple[str, ...], int] = {}
        for i in range(len(words) - n + 1):
            gram = tuple(words[i:i + n])
            counts[gram] = counts.get(gram, 0) + 1
        bad += any(c > max_count for c in counts.values())
    return bad / len(texts)
