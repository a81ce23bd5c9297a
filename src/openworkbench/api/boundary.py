"""The error boundary: whatever escapes a route is answered by the renderer (http_errors.py), never by a
traceback or by Starlette's plain-text 404/405.

Setting ``scope["app"]`` makes Starlette's router raise its 404 and 405 as ``HTTPException`` (instead of
sending plain text), so they reach ``http_errors.escaped`` like every other refusal. The hot endpoints (the RPC,
the proxy) answer their own errors through the same renderer; this layer costs them one ``send`` wrapper.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openworkbench.http_errors import escaped, unexpected


class ErrorBoundary:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        scope["app"] = self
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept", "websocket.close"):
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            conn = HTTPConnection(scope)
            if started or scope["type"] != "http":
                # Too late for an answer of ours: the log line, and the server drops the connection.
                unexpected(exc, f"{scope.get('method', 'WEBSOCKET')} {conn.url.path} (after its answer began)")
                return
            await escaped(conn, exc)(scope, receive, send)
