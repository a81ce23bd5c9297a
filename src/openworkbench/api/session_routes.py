"""``/s/<session>/...``: authenticate, find the session, and hand the traffic to the proxy.

Only the session's owner passes; everyone else gets 401/403 and never reaches the IDE.

This is a plain ASGI layer in front of the FastAPI app, not routes of it: a proxied request is the server's
hottest path, and FastAPI's routing, dependency injection and middleware stack cost more than the whole
relay. Everything not under ``/s/<part>`` goes on to the app untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from openworkbench.api.limits import has_body
from openworkbench.api.rpc import internal_error_response
from openworkbench.auth.permissions import Principal
from openworkbench.errors import InvalidState, NotFound, PermissionDenied, Unauthenticated, WorkbenchError
from openworkbench.proxy import ProxyTarget, forward_http, forward_websocket
from openworkbench.services.container import Services
from openworkbench.services.signin import COOKIE_NAME

log = logging.getLogger(__name__)

PREFIX = "/s/"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The proxy answers in HTTP terms: a missing session is 404 here, not an RPC error code.
HTTP_STATUS = {Unauthenticated: 401, PermissionDenied: 403, NotFound: 404, InvalidState: 503}
# An open WebSocket (a kernel, a terminal) is checked again this often: revoking a token, disabling a
# user or stopping the session ends it, not only new requests.
REVALIDATE_SECONDS = 1.0
WS_CLOSE = {Unauthenticated: 4401, PermissionDenied: 4403, NotFound: 4404, InvalidState: 1013}


async def resolve(services: Services, part: str, authorization: str | None, cookie: str | None,
                  touch: bool = True) -> tuple[str, ProxyTarget]:
    """The session behind ``/s/<part>/`` if the caller owns it; raises the refusal otherwise.

    Answered on the event loop when the caller and the route are known in memory; otherwise one thread hop
    for the store (one for both questions: each hop costs about as much as the lookup itself).
    """
    principal = services.signin.cached(authorization, cookie)
    found = None if principal is None else services.sessions.known_target(part, principal)
    if found is None:
        found = await run_in_threadpool(_resolve, services, part, authorization, cookie, principal)
    if touch:
        services.runner.touch(found[0])
    return found


def _resolve(services: Services, part: str, authorization: str | None, cookie: str | None,
             principal: Principal | None) -> tuple[str, ProxyTarget]:
    if principal is None:
        principal = services.signin.authenticate(authorization, cookie)
    return services.sessions.target(part, principal)


def credentials(conn: HTTPConnection) -> tuple[str | None, str | None]:
    return conn.headers.get("authorization"), conn.cookies.get(COOKIE_NAME)


def refusal(request: Request, exc: WorkbenchError) -> Response:
    wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
    if isinstance(exc, Unauthenticated) and wants_page:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/auth/sign-in?next={quote(target)}", status_code=302)
    status = HTTP_STATUS.get(type(exc), 500)
    return JSONResponse({"error": {"code": status, "message": exc.message}}, status_code=status)


class SessionRoutes:
    """The ASGI app in front of ``app``: serves ``/s/<part>`` and ``/s/<part>/...`` itself."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind == "http" or kind == "websocket") and scope["path"].startswith(PREFIX):
            part, slash, _ = scope["path"][len(PREFIX):].partition("/")
            if part and kind == "http":
                await self._http(Request(scope, receive), part, bool(slash), send)
                return
            if part and slash:
                await self._websocket(WebSocket(scope, receive, send), part)
                return
        await self.app(scope, receive, send)

    async def _http(self, request: Request, part: str, slash: bool, send: Send) -> None:
        try:
            response = await self._respond(request, part, slash)
        except Exception:  # the store failing, or a bug: the error body of every other failure of the server
            log.exception("proxy failed on %s %s", request.method, request.url.path)
            response = internal_error_response()
        await response(request.scope, request.receive, send)

    async def _respond(self, request: Request, part: str, slash: bool) -> Response:
        """The answer to one request; nothing has been sent yet (a relayed body is sent when it is called)."""
        if request.method not in METHODS:  # TRACE, CONNECT, WebDAV: nothing an IDE needs
            return JSONResponse({"error": {"code": 405, "message": "Method Not Allowed"}}, 405,
                                headers={"Allow": ", ".join(sorted(METHODS))})
        if not slash:
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(f"/s/{part}/{query}", status_code=301)
        try:
            _sid, target = await resolve(self.services, part, *credentials(request))
        except WorkbenchError as exc:
            response = refusal(request, exc)
            if has_body(request.headers):  # its body is unread: close rather than let the server drain it
                response.headers["connection"] = "close"
            return response
        return await forward_http(request, target, self.services.pool)

    async def _websocket(self, websocket: WebSocket, part: str) -> None:
        services, creds = self.services, credentials(websocket)
        try:
            _sid, target = await resolve(services, part, *creds)
        except WorkbenchError as exc:
            await websocket.close(code=WS_CLOSE.get(type(exc), 1011), reason=exc.message[:100])
            return
        relay = asyncio.create_task(forward_websocket(websocket, target, services.pool))
        watchdog = asyncio.create_task(_until_refused(services, part, *creds))
        done, _ = await asyncio.wait({relay, watchdog}, return_when=asyncio.FIRST_COMPLETED)
        if relay in done:
            watchdog.cancel()
            return
        # A revoked token, a disabled user or a stopped session: the open socket closes too, with the reason.
        refused = watchdog.result()
        with contextlib.suppress(RuntimeError):
            await websocket.close(code=WS_CLOSE.get(type(refused), 1011), reason=refused.message[:100])
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)


async def _until_refused(services: Services, part: str, authorization: str | None,
                         cookie: str | None) -> WorkbenchError:
    """Ask again every REVALIDATE_SECONDS whether this connection may go on; return the refusal."""
    while True:
        await asyncio.sleep(REVALIDATE_SECONDS)
        try:
            await resolve(services, part, authorization, cookie, touch=False)
        except WorkbenchError as exc:
            return exc
