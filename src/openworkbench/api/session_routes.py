"""``/s/<session>/...``: authenticate, find the session, and hand the traffic to the proxy.

Only the session's owner passes; everyone else gets 401/403 and never reaches the IDE.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import quote

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from openworkbench.errors import InvalidState, NotFound, PermissionDenied, Unauthenticated, WorkbenchError
from openworkbench.proxy import ProxyTarget, forward_http, forward_websocket
from openworkbench.services.container import Services
from openworkbench.services.signin import COOKIE_NAME

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# The proxy answers in HTTP terms: a missing session is 404 here, not an RPC error code.
HTTP_STATUS = {Unauthenticated: 401, PermissionDenied: 403, NotFound: 404, InvalidState: 503}
# An open WebSocket (a kernel, a terminal) is checked again this often: revoking a token, disabling a
# user or stopping the session ends it, not only new requests.
REVALIDATE_SECONDS = 1.0
WS_CLOSE = {Unauthenticated: 4401, PermissionDenied: 4403, NotFound: 4404, InvalidState: 1013}


async def resolve(services: Services, part: str, authorization: str | None, cookie: str | None,
                  touch: bool = True) -> tuple[str, ProxyTarget]:
    # One thread hop for both questions: each hop costs about as much as the lookup itself.
    session_id, target = await run_in_threadpool(_resolve, services, part, authorization, cookie)
    if touch:
        services.runner.touch(session_id)
    return session_id, target


def _resolve(services: Services, part: str, authorization: str | None, cookie: str | None,
             ) -> tuple[str, ProxyTarget]:
    principal = services.signin.authenticate(authorization, cookie)
    return services.sessions.target(part, principal)


def refusal(request: Request, exc: WorkbenchError) -> Response:
    wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
    if isinstance(exc, Unauthenticated) and wants_page:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/auth/sign-in?next={quote(target)}", status_code=302)
    status = HTTP_STATUS.get(type(exc), 500)
    return JSONResponse({"error": {"code": status, "message": exc.message}}, status_code=status)


def router(services: Services) -> APIRouter:
    routes = APIRouter()

    @routes.api_route("/s/{part}", methods=METHODS)
    async def add_slash(part: str, request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/s/{part}/{query}", status_code=301)

    @routes.api_route("/s/{part}/{rest:path}", methods=METHODS)
    async def session_http(part: str, rest: str, request: Request) -> Response:
        try:
            _sid, target = await resolve(
                services, part, request.headers.get("authorization"), request.cookies.get(COOKIE_NAME)
            )
        except WorkbenchError as exc:
            return refusal(request, exc)
        return await forward_http(request, target, services.pool)

    @routes.websocket("/s/{part}/{rest:path}")
    async def session_ws(part: str, rest: str, websocket: WebSocket) -> None:
        credentials = (websocket.headers.get("authorization"), websocket.cookies.get(COOKIE_NAME))
        try:
            _sid, target = await resolve(services, part, *credentials)
        except WorkbenchError as exc:
            await websocket.close(code=WS_CLOSE.get(type(exc), 1011), reason=exc.message[:100])
            return
        relay = asyncio.create_task(forward_websocket(websocket, target, services.pool))
        watchdog = asyncio.create_task(_until_refused(services, part, *credentials))
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

    return routes


async def _until_refused(services: Services, part: str, authorization: str | None,
                         cookie: str | None) -> WorkbenchError:
    """Ask again every REVALIDATE_SECONDS whether this connection may go on; return the refusal."""
    while True:
        await asyncio.sleep(REVALIDATE_SECONDS)
        try:
            await resolve(services, part, authorization, cookie, touch=False)
        except WorkbenchError as exc:
            return exc
