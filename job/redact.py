"""Secrets never leave the process: URLs and texts with their credentials masked.

A URL can carry credentials in two places: its user-info (``http://user:PASSWORD@host``) and its query
(``?api-key=KEY``, ``&token=...``). :func:`redact_url` is the form that may be shown or stored (stdout, error
messages, summaries, fingerprints, YAML dumps); :func:`mask` removes the same secret values from any text (an
error message from a client library that quotes the URL, say). Nothing else in the project spells these rules.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"
# Query parameters whose value is a credential (compared case-insensitively, '-' and '_' ignored).
_KEYLIKE = re.compile(
    r"^(api ?key|key|token|access ?token|auth|authorization|secret|client ?secret|password|passwd|pwd|sig|"
    r"signature|x ?amz ?signature|x ?amz ?credential|x ?amz ?security ?token|code|session)$"
)
# A value that looks like an API key wherever it appears (OpenAI, Anthropic, Hugging Face, AWS access keys).
KEY_SHAPED = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{16,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16})\b")


def _keylike(name: str) -> bool:
    return bool(_KEYLIKE.match(re.sub(r"[-_.\s]+", " ", name.strip().lower()).strip()))


def url_secrets(url: str | None) -> list[str]:
    """The credential values a URL carries (the user-info password and key-like query values), longest first,
    each as written and percent-decoded. The user name is masked in :func:`redact_url` only: it is often a
    plain word that other text holds too."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: set[str] = set()
    netloc = parts.netloc
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        password = userinfo.partition(":")[2]
        if password:
            found.add(password)
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if value and _keylike(name):
            found.add(value)
    for raw in re.findall(r"[?&][^=&#]+=([^&#]+)", url):
        if any(raw == quote(v, safe="") or raw == v for v in found):
            found.add(raw)
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def redact_url(url: str | None) -> str | None:
    """``url`` with its user-info and key-like query values replaced by ``***``; anything not a URL is returned
    with key-shaped values masked."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask(url, url_secrets(url))
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{name}={MASK}" if value and _keylike(name) else (f"{name}={value}" if value or "=" in pair else name)
        for pair in parts.query.split("&")
        if pair
        for name, _, value in [pair.partition("=")]
    )
    return mask(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), url_secrets(url))


def mask(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with each of ``secrets`` (at least 3 characters), bearer tokens and key-shaped values masked."""
    for secret in sorted((s for s in secrets if s and len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = re.sub(r"(Bearer\s+)\S+", rf"\1{MASK}", text)
    return KEY_SHAPED.sub(MASK, text)
