"""Security headers on the server's own pages, never on an IDE's answers.

``SecurityHeaders`` wraps the routing table (api/app.py); the path test below leaves out the RPC's (``/api/``) and
the proxy's (``/s/``) answers, so an IDE's pages (JupyterLab runs inline scripts and frames itself) are never
touched, on the main origin or on a session's own.

Every answer gets ``X-Content-Type-Options: nosniff``; an HTML one also gets a Content-Security-Policy with no
inline script nor style and no framing, ``X-Frame-Options: DENY`` for browsers without CSP frame-ancestors, and
``Referrer-Policy: same-origin`` (a session's URL never leaks to another site).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No form-action: after a sign-in the browser may be sent on to a session's own origin (server.session_domain),
# and Chromium applies form-action to the redirects that follow a form's POST.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
NOT_OURS = ("/s/", "/api/")  # the proxy's and the RPC's answers


def add_security_headers(headers: MutableHeaders) -> None:
    """Set the headers an answer of ours needs (for a route that builds raw ASGI messages itself)."""
    html = headers.get("content-type", "").startswith("text/html")
    for name, value in PAGE_HEADERS.items():
        if html or name == "X-Content-Type-Options":
            headers[name] = value


class SecurityHeaders:
    """ASGI middleware: ``app.add_middleware(SecurityHeaders)``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(NOT_OURS):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                add_security_headers(MutableHeaders(scope=message))
            await send(message)

        await self.app(scope, receive, send_with_headers)
