"""``/s/<session>/...``: authenticate, find the session, and hand the traffic to the proxy.

Only the session's owner passes; everyone else gets 401/403 and never reaches the IDE.

With ``server.session_domain`` each session is also served on its own host, ``<part>.<domain>``
(sessions/origins.py): there only ``/s/<part>/`` and the ticket redemption ``/_owb/auth`` exist, and
only that origin's own sign-in cookie counts. The main origin then sends a signed-in browser there with a
ticket instead of serving the IDE's pages itself; API clients (an Authorization header) are served on both.

Its entry points are routes of the one routing table (api/routes.py, ``routes`` below): ``/s/<part>`` and
``/s/<part>/...`` for HTTP and WebSocket, and a route matching every request to a session origin. Each is an
ASGI endpoint (no per-request wrapper): a proxied request is the server's hottest path. Refusals are rendered
by http_errors.proxy_error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn
from urllib.parse import quote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from openworkbench.api.limits import has_body
from openworkbench.auth.permissions import Principal
from openworkbench.errors import (
    InvalidState,
    NotFound,
    PermissionDenied,
    StoreUnavailable,
    Unauthenticated,
    WorkbenchError,
)
from openworkbench.http_errors import proxy_error, unexpected
from openworkbench.proxy import ProxyTarget, forward_http, forward_websocket
from openworkbench.proxy.relay_http import raw_path_and_query
from openworkbench.services.container import Services
from openworkbench.services.signin import COOKIE_NAME
from openworkbench.sessions.origins import AUTH_PATH, SessionOrigins
from openworkbench.store.schema import utcnow

PREFIX = "/s/"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# An open WebSocket (a kernel, a terminal) is checked again this often: revoking a token, disabling a
# user or stopping the session ends it, not only new requests.
REVALIDATE_SECONDS = 1.0
NO_STORE = {"Cache-Control": "no-store"}  # a ticket must not be kept in a cache
NOT_ALLOWED = WorkbenchError("Method Not Allowed")
NOT_ALLOWED.code = NOT_ALLOWED.http_status = 405
WS_CLOSE = {Unauthenticated: 4401, PermissionDenied: 4403, NotFound: 4404, InvalidState: 1013, StoreUnavailable: 1013}


async def resolve(services: Services, part: str, authorization: str | None, cookie: str | None,
                  touch: bool = True) -> tuple[str, ProxyTarget]:
    """The session behind ``/s/<part>/`` if the caller owns it; raises the refusal otherwise.

    Answered on the event loop when the caller and the route are known in memory; otherwise one thread hop
    for the store (one for both questions: each hop costs about as much as the lookup itself).
    """
    began = time.perf_counter()  # the route check may share the sign-in check's epoch read (store/epochs.py)
    principal = services.signin.cached(authorization, cookie)
    found = None if principal is None else services.routes.known_target(part, principal.username, began)
    if found is None:
        found = await run_in_threadpool(_resolve, services, part, authorization, cookie, principal)
    if touch:
        services.runner.touch(found[0])
    return found


def _resolve(services: Services, part: str, authorization: str | None, cookie: str | None,
             principal: Principal | None) -> tuple[str, ProxyTarget]:
    if principal is None:
        principal = services.signin.authenticate(authorization, cookie)
    return services.routes.target(part, principal.username)


def credentials(conn: HTTPConnection, host_part: str | None = None) -> tuple[str | None, str | None]:
    """The Authorization header and the sign-in cookie that counts here: on the session origin of ``host_part``
    only a cookie issued for it (``<part>.<random>``), on the main origin only a main sign-in (no dot)."""
    cookie = conn.cookies.get(COOKIE_NAME)
    if cookie is not None:
        bound = cookie.startswith(f"{host_part}.") if host_part is not None else "." not in cookie
        cookie = cookie if bound else None
    return conn.headers.get("authorization"), cookie


def refusal(request: Request, exc: WorkbenchError, main_origin: str | None = None) -> Response:
    """``main_origin``: the request came to a session origin, whose sign-in starts on the main one."""
    wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
    if isinstance(exc, Unauthenticated) and wants_page:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if main_origin is not None:
            return RedirectResponse(main_origin + target, status_code=302)
        return RedirectResponse(f"/auth/sign-in?next={quote(target)}", status_code=302)
    return proxy_error(exc)


class ProxyRoutes:
    """The proxy's entry points; ``routes`` lists them for the routing table."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def routes(self) -> list[BaseRoute]:
        http, websocket = _Asgi(self.http), _Asgi(self.websocket)
        table: list[BaseRoute] = [SessionOrigin(self)] if self.services.origins is not None else []
        return [*table, Route(PREFIX + "{part}", http), Route(PREFIX + "{part}/{path:path}", http),
                WebSocketRoute(PREFIX + "{part}/{path:path}", websocket)]

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        part = scope["path_params"]["part"]
        await self._http(Request(scope, receive), part, scope["path"] != PREFIX + part, send, None)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._websocket(WebSocket(scope, receive, send), scope["path_params"]["part"], None)

    async def _session_origin(self, scope: Scope, receive: Receive, send: Send, part: str) -> None:
        """A request to ``<part>.<domain>``: its session, the ticket redemption, and nothing else."""
        path, home = scope["path"], f"{PREFIX}{part}"
        if scope["type"] == "websocket":
            if path.startswith(home + "/"):
                await self._websocket(WebSocket(scope, receive, send), part, part)
            else:
                await WebSocket(scope, receive, send).close(code=4404)
            return
        request = Request(scope, receive)
        if path == AUTH_PATH:
            try:
                response = await self._redeem(request, part)
            except Exception as exc:  # the store failing, or a bug: the server's usual error body, not a traceback
                response = proxy_error(unexpected(exc, f"ticket redemption on {part}"))
        elif path == home or path.startswith(home + "/"):
            await self._http(request, part, path != home, send, part)
            return
        elif path == "/":
            response = RedirectResponse(home + "/", status_code=302)
        else:
            response = proxy_error(NotFound(f"This host serves only the session at {home}/"))
        await response(scope, receive, send)

    async def _http(self, request: Request, part: str, slash: bool, send: Send, host_part: str | None) -> None:
        try:
            response = await self._respond(request, part, slash, host_part)
        except Exception as exc:  # the store failing, or a bug: the error body of every other failure of the server
            response = proxy_error(unexpected(exc, f"proxy {request.method} {request.url.path}"))
        await response(request.scope, request.receive, send)

    async def _respond(self, request: Request, part: str, slash: bool, host_part: str | None) -> Response:
        """The answer to one request; nothing has been sent yet (a relayed body is sent when it is called)."""
        if request.method not in METHODS:  # TRACE, CONNECT, WebDAV: nothing an IDE needs
            return proxy_error(NOT_ALLOWED, headers={"Allow": ", ".join(sorted(METHODS))})
        if not slash:
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(f"/s/{part}/{query}", status_code=301)
        authorization, cookie = credentials(request, host_part)
        origins = self.services.origins
        if origins is not None and host_part is None and not authorization:
            return await self._to_session_origin(request, part, cookie, origins)
        try:
            _sid, target = await resolve(self.services, part, authorization, cookie)
        except WorkbenchError as exc:
            response = refusal(request, exc, origins.main if origins and host_part else None)
            if has_body(request.headers):  # its body is unread: close rather than let the server drain it
                response.headers["connection"] = "close"
            return response
        return await forward_http(request, target, self.services.pool)

    async def _to_session_origin(self, request: Request, part: str, cookie: str | None,
                                 origins: SessionOrigins) -> Response:
        """A browser on the main origin: its owner goes to the session's own origin with a one-time ticket."""
        try:
            await resolve(self.services, part, None, cookie, touch=False)
        except WorkbenchError as exc:
            return refusal(request, exc)
        if request.method not in ("GET", "HEAD") or cookie is None:
            return proxy_error(PermissionDenied(f"This session is served at its own origin: {origins.origin(part)}"))
        path, query = raw_path_and_query(request)
        ticket = origins.issue(part, cookie)
        location = f"{origins.origin(part)}{AUTH_PATH}?{urlencode({'ticket': ticket, 'next': _join(path, query)})}"
        return RedirectResponse(location, status_code=302, headers=NO_STORE)

    async def _redeem(self, request: Request, part: str) -> Response:
        """``/_owb/auth`` on a session origin: trade a ticket for this origin's own sign-in cookie."""
        services, home = self.services, f"{PREFIX}{part}/"
        wanted = request.query_params.get("next", "")
        next_path = wanted if wanted.startswith(home) and "\\" not in wanted else home
        assert services.origins is not None
        try:
            ticket = services.origins.redeem(request.query_params.get("ticket", ""), part)
            cookie, expires = await run_in_threadpool(services.signin.origin_cookie, ticket.cookie_hash, part)
        except WorkbenchError as exc:
            return proxy_error(exc)
        try:  # the owner still (a ticket outlives nothing: the session may have changed hands or ended)
            await resolve(services, part, None, cookie, touch=False)
        except WorkbenchError as exc:
            await run_in_threadpool(services.signin.sign_out, cookie)
            return proxy_error(exc)
        response = RedirectResponse(next_path, status_code=302, headers=NO_STORE)
        max_age = int((expires - utcnow()).total_seconds())
        # Host-only (no Domain): neither the main origin nor another session's host ever receives it.
        response.set_cookie(COOKIE_NAME, cookie, max_age=max_age, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https", path="/")
        return response

    async def _websocket(self, websocket: WebSocket, part: str, host_part: str | None) -> None:
        services, creds = self.services, credentials(websocket, host_part)
        if services.origins is not None and host_part is None and not creds[0]:
            # A browser's socket belongs on the session's own origin (where its pages are).
            await websocket.close(code=4403, reason="This session is served at its own origin")
            return
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


class _Asgi:
    """A bound method as an ASGI endpoint (Starlette would wrap a plain method as request -> response)."""

    def __init__(self, endpoint: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(scope, receive, send)


class SessionOrigin(BaseRoute):
    """Every request to ``<part>.<session_domain>`` (``server.session_domain``): that host serves its session
    alone, whatever the path (``ProxyRoutes._session_origin``)."""

    def __init__(self, proxy: ProxyRoutes) -> None:
        assert proxy.services.origins is not None
        self.proxy, self.origins = proxy, proxy.services.origins

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket"):
            part = self.origins.part_of(Headers(scope=scope).get("host"))
            if part is not None:
                return Match.FULL, {"path_params": {"part": part}}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: object) -> NoReturn:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.proxy._session_origin(scope, receive, send, scope["path_params"]["part"])

    def __repr__(self) -> str:
        return "SessionOrigin(<part>.<session_domain>/*)"


def _join(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


async def _until_refused(services: Services, part: str, authorization: str | None,
                         cookie: str | None) -> WorkbenchError:
    """Ask again every REVALIDATE_SECONDS whether this connection may go on; return the refusal."""
    while True:
        await asyncio.sleep(REVALIDATE_SECONDS)
        try:
            await resolve(services, part, authorization, cookie, touch=False)
        except StoreUnavailable:
            continue  # the database away is no refusal: an open kernel or terminal outlives the outage
        except WorkbenchError as exc:
            return exc
