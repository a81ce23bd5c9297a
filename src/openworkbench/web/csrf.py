"""Cross-site request forgery: what every state-changing browser request of the server's own pages must pass.

Two independent checks, both required:

1. **Same origin.** ``Origin``, when the browser sends it, must name this server (the Host, which is
   ``X-Forwarded-Host`` only from a trusted proxy). Without ``Origin``, ``Sec-Fetch-Site`` must be
   ``same-origin`` (or ``none``: the user typed it). A request with neither is an old browser or not a browser:
   the token alone decides, as Django does on plain HTTP. ``same-site`` is refused: with per-session origins
   every session is a sibling host of the main one.
2. **A token** (double-submit): a random value in an HttpOnly, SameSite=Strict cookie, rendered into the page's
   forms (field ``csrf_token``) or sent by its ``fetch()`` calls in the ``X-OWB-CSRF`` header. Another site can
   make the browser send the cookie but cannot read it, so it cannot put the same value in the request.

Use: ``token = csrf.token(request)`` when rendering (then ``csrf.remember(response, request, token)``), and
``csrf.check(request, submitted)`` (raises ``PermissionDenied``) before acting on a POST.
"""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection
from starlette.responses import Response

from openworkbench.auth.tokens import new_token
from openworkbench.errors import PermissionDenied
from openworkbench.proxy.rewrite import origin_allowed
from openworkbench.proxy.target import CSRF_COOKIE

FIELD = "csrf_token"
HEADER = "x-owb-csrf"
_SAME_SITE_FETCH = frozenset({"same-origin", "none"})


def token(conn: HTTPConnection) -> str:
    """The browser's CSRF token: the one its cookie holds, or a new one (then ``remember`` it)."""
    current = conn.cookies.get(CSRF_COOKIE, "")
    return current if len(current) >= 32 else new_token()


def remember(response: Response, conn: HTTPConnection, value: str) -> None:
    """Set the cookie holding ``value`` unless the browser has it already."""
    if conn.cookies.get(CSRF_COOKIE) != value:
        response.set_cookie(CSRF_COOKIE, value, httponly=True, samesite="strict", path="/",
                            secure=conn.url.scheme == "https")


def cross_site(conn: HTTPConnection) -> str | None:
    """Why this request does not come from a page of this server, or None when it may."""
    headers = conn.headers
    origin = headers.get("origin")
    if origin is not None:
        if origin_allowed(origin, headers.get("host")):
            return None
        return f"Cross-site request refused: it comes from {origin[:100]}, not from this server"
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in _SAME_SITE_FETCH:
        return f"Cross-site request refused: the browser says it comes from a {site[:20]} page"
    return None


def check(conn: HTTPConnection, submitted: str | None) -> None:
    """Refuse a request that is cross-site or lacks the token of the cookie (``submitted``: the form's field,
    else the ``X-OWB-CSRF`` header is used)."""
    reason = cross_site(conn)
    if reason is not None:
        raise PermissionDenied(reason)
    expected = conn.cookies.get(CSRF_COOKIE, "")
    given = submitted if submitted is not None else conn.headers.get(HEADER, "")
    if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise PermissionDenied(
            "The form's security token is missing or does not match this browser's: reload the page and try again"
        )
