"""API tokens: random, shown once, stored only as a hash."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, unquote

TOKEN_KINDS: Final = ("user", "admin", "admin-readonly", "super-admin", "super-admin-readonly")


def new_token() -> str:
    """A fresh token with 256 bits of randomness."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast unsalted hash cannot be brute-forced; a slow KDF
    # would only add latency to every request.
    return hashlib.sha256(token.encode()).hexdigest()


def parse_authorization(header: str | None) -> str | None:
    """The token from ``Authorization: Bearer <t>`` or ``Authorization: Key <t>``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "key") or not value.strip():
        return None
    return value.strip()


RPC_COOKIE = re.compile(r"([0-9a-f]{8})\|([A-Za-z0-9%]{1,80})\|([0-9a-f]{64})")


def rpc_cookie(session_id: str, secret: str, expires: datetime) -> str:
    """A session's RPC cookie as the product makes it: ``value|expiry|mac``. The expiry is an HTTP date,
    URL-encoded (what clients parse); the MAC (HMAC-SHA256 under the session's secret) covers the id and
    the expiry, so neither can be changed and nothing more is stored."""
    when = email.utils.format_datetime(expires.astimezone(UTC).replace(microsecond=0), usegmt=True)
    encoded = quote(when, safe="")
    return f"{session_id}|{encoded}|{_rpc_mac(secret, session_id, encoded)}"


def _rpc_mac(secret: str, session_id: str, encoded_expiry: str) -> str:
    message = f"rpc-cookie|{session_id}|{encoded_expiry}".encode()
    return hmac.new(secret.encode(), message, "sha256").hexdigest()


def parse_rpc_cookie(cookie: str) -> tuple[str, datetime] | None:
    """(session id, expiry) of something shaped like an RPC cookie; None otherwise. Not yet checked."""
    match = RPC_COOKIE.fullmatch(cookie.strip())
    if match is None:
        return None
    try:
        expires = email.utils.parsedate_to_datetime(unquote(match.group(2)))
    except (TypeError, ValueError):
        return None
    if expires.tzinfo is None:
        return None
    return match.group(1), expires


def rpc_cookie_matches(cookie: str, secret: str) -> bool:
    """Whether the cookie's MAC is the one ``secret`` gives its id and expiry (in constant time)."""
    session_id, encoded, mac = cookie.strip().split("|")
    return hmac.compare_digest(_rpc_mac(secret, session_id, encoded), mac)
