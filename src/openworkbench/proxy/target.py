"""What the proxy forwards to, and the one error of its own (rendered by http_errors.proxy_error)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from openworkbench.errors import WorkbenchError
from openworkbench.proxy.upstream import Upstream

# The server's own sign-in cookie: stripped before a request reaches an IDE, so the IDE never sees it.
SIGN_IN_COOKIE = "owb_session"
# The server's anti-CSRF cookie (web/csrf.py); like the sign-in cookie, an IDE neither sees nor sets it.
CSRF_COOKIE = "owb_csrf"
SERVER_COOKIES = frozenset({SIGN_IN_COOKIE, CSRF_COOKIE})


@dataclass(frozen=True)
class ProxyTarget:
    """A resolved session: the caller has authenticated the user and looked the session up."""

    upstream: Upstream  # where the IDE listens (and, for a socket, which uid must serve it)
    prefix: str  # public URL prefix, e.g. "/s/0da29cfc78a31acdd5861/"; always ends with "/"
    strip_prefix: bool  # True: the IDE has no base-path option (code-server); forward paths without the prefix
    headers: dict[str, str] = field(default_factory=dict)  # sent upstream on every request (IDE secret)
    session_id: str = ""  # for the log

    def __post_init__(self) -> None:
        if isinstance(self.upstream, str):  # a bare path (tools, tests): a socket of the server's own user
            object.__setattr__(self, "upstream", Upstream.parse(self.upstream, os.geteuid()))
        if not (self.prefix.startswith("/") and self.prefix.endswith("/")):
            raise ValueError(f"proxy prefix must start and end with '/': {self.prefix!r}")


class UpstreamUnavailable(WorkbenchError):
    """The IDE's socket is missing, refuses connections, or broke off before answering."""

    code = 502
    http_status = 502

