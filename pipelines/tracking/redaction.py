"""Credentials: recognised and kept out of params, tags, files and printed URIs.

Credentials are never read from a file: MLflow's client takes them from
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``).
What is logged goes through :func:`scrub`; what is printed through :func:`redact_uri`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SECRET_TOKEN = re.compile(
    r"^(.*(password|passwd|secret|credentials?)"
    r"|(access|auth|api|bearer|refresh|id|session|private)?token"
    r"|(api|access|secret|private|signing|encryption)?key"
    r"|pwd|auth|authorization|cookie)$"
)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")
_SECRET_VALUE = re.compile(
    r"(?i)\bbearer\s+\S+"  # an Authorization header value
    r"|\b(AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\b(ghp|gho|ghu|ghs|github_pat)_[A-Za-z0-9_]{20,}"  # GitHub tokens
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
REDACTED = "[redacted]"


def is_secret_key(key: str) -> bool:
    """Whether a param/tag/settings key names a credential (``db.password``, ``api_key``...).

    The key is split into words (on ``.``, ``_``, ``-``, camel case) and each word is
    checked, so ``max_tokens`` or ``tokenizer`` are not taken for secrets but
    ``auth_token``, ``aws.secret_access_key`` and ``key`` are.
    """
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    words = [w for w in re.split(r"[^a-z0-9]+", spaced) if w]
    pairs = [a + b for a, b in zip(words, words[1:], strict=False)]  # "api","key" -> "apikey"
    return any(_SECRET_TOKEN.match(w) for w in words + pairs)


def redact_uri(uri: str) -> str:
    """``https://user:pass@host/x`` -> ``https://user:***@host/x`` (other text unchanged)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", uri)


def scrub(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` safe to log: credential-like keys and values are redacted.

    A key that names a credential keeps its name with the value ``[redacted]`` (so a reader
    sees that something was there); passwords inside URIs are masked; values that look like
    bearer tokens, cloud keys or private keys are redacted whatever their key.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if is_secret_key(key):
            out[key] = REDACTED
        elif isinstance(value, str):
            masked = redact_uri(value)
            out[key] = REDACTED if _SECRET_VALUE.search(masked) else masked
        else:
            out[key] = value
    return out


def has_userinfo_password(uri: str) -> bool:
    """Whether a URI holds ``user:password@`` (a credential written where it must not be)."""
    return bool(_USERINFO.search(uri))
