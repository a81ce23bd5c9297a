"""API tokens: random, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

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


def rpc_cookie(session_id: str, secret: str) -> str:
    """A session's RPC cookie: its id and a MAC under the session's secret, so nothing more is stored."""
    mac = hmac.new(secret.encode(), b"rpc-cookie:" + session_id.encode(), "sha256").hexdigest()
    return f"{session_id}.{mac}"
