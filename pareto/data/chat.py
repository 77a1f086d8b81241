"""Prompts as chat messages: one place that turns a prompt string into the turns a chat template renders.

A prompt travels through pareto as one string (pairs, MLflow artifacts, the UI). A plain question is one user
turn. A multi-turn dialogue is kept in the HH-RLHF transcript form ("\\n\\nHuman: ...\\n\\nAssistant: ...",
ending with the "\\n\\nAssistant:" that asks for the reply), and becomes one chat message per turn here, so the
model's own chat template sees the real conversation, not one user turn holding a transcript.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_transcript(prompt: str) -> bool:
    """True for an HH-style dialogue (it starts with a Human turn)."""
    return prompt.startswith(HUMAN) or prompt.startswith(HUMAN.lstrip("\n"))


def to_messages(prompt: str) -> list[dict[str, str]]:
    """The chat messages of a prompt: one user turn, or one message per turn of an HH transcript.

    The transcript's final empty "Assistant:" (where the reply goes) is dropped: the chat template's generation
    prompt takes its place.
    """
    if not is_transcript(prompt):
        return [{"role": "user", "content": prompt}]
    text = prompt if prompt.startswith("\n\n") else "\n\n" + prompt
    parts = _TURN.split(text)[1:]  # [role, content, role, content, ...]
    messages = [{"role": _ROLES[role], "content": content.strip()} for role, content in zip(parts[::2], parts[1::2],
                                                                                             strict=True)]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def from_messages(messages: Sequence[dict[str, str]]) -> str:
    """The prompt string of chat messages (the inverse of `to_messages`): a single user turn stays plain text."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    names = {"user": HUMAN, "assistant": ASSISTANT}
    out = []
    for m in messages:
        if m.get("role") not in names or not isinstance(m.get("content"), str):
            raise ValueError("chat messages need role user/assistant and text content")
        out.append(f"{names[m['role']]} {m['content'].strip()}")
    return "".join(out) + ASSISTANT


def last_user_turn(prompt: str) -> str:
    """The last user message of a prompt (what a short-context scorer such as the MiniLM reward model reads)."""
    users = [m["content"] for m in to_messages(prompt) if m["role"] == "user"]
    return users[-1] if users else prompt


def drop_leading_turns(prompt: str, keep: int) -> str:
    """The prompt with only its last `keep` messages (a transcript ending on a user turn stays one)."""
    messages = to_messages(prompt)
    if len(messages) <= keep:
        return prompt
    kept = messages[-keep:]
    while kept and kept[0]["role"] != "user":  # a conversation starts with the user
        kept = kept[1:]
    return from_messages(kept)
