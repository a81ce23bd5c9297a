"""Per-session origins (``server.session_domain``): each session at ``<id part>.<domain>``, as JupyterHub's
``subdomain_host`` puts each user's server on its own host.

An IDE's pages then run on an origin of their own: a script there cannot read or set the main origin's
cookies (ours are host-only), and a service worker it registers controls only that session's host. The main
origin (the domain itself, or any other host name of the server) keeps the sign-in; a browser reaches a session
origin through a ticket:

1. ``GET <main>/s/<part>/x`` by the signed-in owner -> 302 to ``<part>.<domain>/_owb/auth?ticket=T&next=/s/<part>/x``;
2. the session origin redeems T (random, kept here, usable once, for this session only, valid TICKET_SECONDS),
   sets its own host-only sign-in cookie (bound to this session, tied to the same API token as the main
   sign-in, so revoking the token ends it too) and redirects to ``next``.

Tickets live in this process's memory: the server is one process, and a restart only costs a redirect.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from openworkbench.auth.tokens import hash_token
from openworkbench.errors import Unauthenticated

TICKET_SECONDS = 60.0  # the browser follows the redirect at once; this only bounds a leaked URL's use
AUTH_PATH = "/_owb/auth"
_LABEL = re.compile(r"[a-z0-9-]{1,63}")


@dataclass(frozen=True)
class Ticket:
    part: str  # the session's URL part: the ticket opens this session's origin only
    cookie_hash: str  # the main origin's sign-in that asked for it: the user (and token) it is bound to
    expires: float  # time.monotonic()


class SessionOrigins:
    def __init__(self, session_domain: str) -> None:
        """``session_domain``: a URL such as ``https://sessions.example.com`` (config.py normalises it)."""
        parts = urlsplit(session_domain)
        self.scheme = parts.scheme
        self.domain = (parts.hostname or "").lower()
        self.port = f":{parts.port}" if parts.port else ""
        self.main = f"{self.scheme}://{self.domain}{self.port}"
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()

    def part_of(self, host: str | None) -> str | None:
        """The session URL part a Host header names (``<part>.<domain>[:port]``), or None for the main origin."""
        if not host:
            return None
        name = host.lower().rsplit(":", 1)[0] if not host.endswith("]") else host.lower()
        name = name.rstrip(".")
        suffix = "." + self.domain
        if not name.endswith(suffix):
            return None
        label = name[: -len(suffix)]
        return label if _LABEL.fullmatch(label) else None

    def origin(self, part: str) -> str:
        return f"{self.scheme}://{part}.{self.domain}{self.port}"

    def url(self, prefix: str) -> str:
        """A session's public URL from its prefix ``/s/<part>/``: the path stays, the host becomes its own.

        The path keeps the prefix (JupyterHub keeps ``/user/<name>/`` on the user's host too): the IDE was
        started with that base path and needs no other.
        """
        part = prefix.split("/")[2]
        return self.origin(part) + prefix

    def issue(self, part: str, cookie: str) -> str:
        ticket = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            # Expired tickets go when new ones come: the map holds at most a minute of sign-ins.
            self._tickets = {key: t for key, t in self._tickets.items() if t.expires > now}
            self._tickets[hash_token(ticket)] = Ticket(part, hash_token(cookie), now + TICKET_SECONDS)
        return ticket

    def redeem(self, ticket: str, part: str) -> Ticket:
        """The ticket's grant, once: a second use, an expired ticket or another session's is refused."""
        with self._lock:
            found = self._tickets.pop(hash_token(ticket), None) if ticket else None
        if found is None or found.expires <= time.monotonic():
            raise Unauthenticated("This sign-in link is invalid, expired or already used: open the session again")
        if found.part != part:
            raise Unauthenticated("This sign-in link is for another session")
        return found
