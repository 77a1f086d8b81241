"""Secrets never reach a log: token-like keys, passwords in URLs and token-shaped values are masked."""

from __future__ import annotations

import re
from typing import Any

# Keys whose values are secrets (matched on the last dotted part, whole words: `max_new_tokens` is not one).
_SECRET_KEY = re.compile(r"(^|[_\-])(token|password|passwd|secret|api[_\-]?key|access[_\-]?key|auth|credentials?)"
                         r"($|[_\-])", re.IGNORECASE)
# Values that look like credentials whatever their key: `scheme://user:password@host`, common token prefixes.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^/\s@]+(?P<at>@)", re.IGNORECASE)
_TOKEN_VALUE = re.compile(r"^(hf_|sk-|ghp_|gho_|github_pat_|xox[bp]-|AKIA)[A-Za-z0-9_\-]{8,}$")
MASK = "***"


def mask_secrets(params: dict[str, Any]) -> dict[str, Any]:
    """Mask values of token/password/api-key-like keys, passwords in URLs and token-shaped strings."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is not None and _SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            out[key] = MASK
        elif isinstance(value, str):
            out[key] = MASK if _TOKEN_VALUE.match(value) else mask_url(value)
        else:
            out[key] = value
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def mask_url(url: str) -> str:
    """A URL with its password (`scheme://user:password@host`) masked, for messages and logs."""
    return _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<at>", url)
