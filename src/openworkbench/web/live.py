"""``GET /live/sessions?version=<v>``: the homepage's long-poll of the signed-in user's sessions.

The pages' own endpoint, not part of the Posit API (docs/web.md, "Live updates"). It answers
``{"version", "sessions"}`` (the sessions as ``get_session`` renders them, from the views' cache) at once when the
user's version is not ``v``, else when a commit changes one of their sessions (sessions/live.py) or after
``server.live_wait_s``. Credentials are those of the RPC (api/rpc.py ``credentials``: a token, or the sign-in
cookie with the CSRF header), checked from the sign-in cache on arrival and again before answering. A
sign-in revoked while the request waits gets 401, not the list, within about ``REVOCATION_CHECK_S``: each
waiter looks at the auth epoch that often (one read per process, however many wait) and checks its own
credentials again only when the epoch moved, or when a page sign-in's cache entry went stale: a sign-in that
expires while it waits gets 401 within a second of its expiry too. A client that goes away while it waits ends the wait
at once: its waiter, its tasks and its connection go with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive

from openworkbench import metrics
from openworkbench.api.rpc import Credentials, credentials
from openworkbench.auth.cache import EpochSample
from openworkbench.auth.permissions import Principal
from openworkbench.errors import BadRequest, PermissionDenied, StoreError, Unauthenticated, WorkbenchError
from openworkbench.http_errors import api_error
from openworkbench.services.container import Services
from openworkbench.sessions.views import encode
from openworkbench.web.pages import own_sessions
from openworkbench.web.templating import NO_STORE

PATH = "/live/sessions"
VERSION_MAX_CHARS = 64  # ours are ~20; anything much longer is not a version this server gave out
REVOCATION_CHECK_S = 1.0


async def caller(services: Services, creds: Credentials) -> Principal:
    """The caller from the sign-in cache (no store read), else from the store in a worker thread."""
    principal = creds.cached(services)
    if principal is None:
        principal = await run_in_threadpool(creds.caller, services)
    return principal


def known_version(request: Request) -> str:
    unknown = sorted(set(request.query_params) - {"version"})
    if unknown:
        raise BadRequest(f"unknown query parameter '{unknown[0][:40]}' of {PATH}: it takes only 'version'")
    version = request.query_params.get("version", "")
    if len(version) > VERSION_MAX_CHARS:
        raise BadRequest(f"'version' is longer than {VERSION_MAX_CHARS} characters: it is not one this server "
                         "gave out")
    return version


async def _until_disconnected(receive: Receive) -> None:
    """Returns when the client has gone (a GET's empty body is read on the way)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _until_refused(services: Services, creds: Credentials, access: EpochSample, seen: int | None) -> None:
    """Returns once the credentials are refused: looked at again each time anyone's access has changed since
    ``seen``, the sample taken before they were last checked (a later one could already hold a revocation), and
    when a page sign-in's cache entry goes stale (by the sign-in's expiry at the latest; tokens do not expire)."""
    stale_at = creds.expiry_check_at(services)
    while True:
        await asyncio.sleep(REVOCATION_CHECK_S)
        due = stale_at is not None and time.monotonic() >= stale_at
        if (now := access.current()) == seen and not due:
            continue
        seen = now
        try:
            await caller(services, creds)  # the epoch moved or the entry went stale: from the store
        except (Unauthenticated, PermissionDenied):
            return
        except StoreError:
            stale_at = None  # the store is away: this wait goes on, on the epoch alone; its answer checks again
            continue
        stale_at = creds.expiry_check_at(services)


async def wait_or_leave(services: Services, request: Request, principal: Principal, known: str,
                        until_refused: Coroutine[Any, Any, None]) -> bool | None:
    """``SessionFeed.wait`` (True: waited, changed, or ``until_refused`` returned meanwhile; False: too many
    waiters), or None if the client left."""
    refused = asyncio.ensure_future(until_refused)
    wait = asyncio.ensure_future(services.live.wait(principal.user_id, known, services.settings.server.live_wait_s))
    gone = asyncio.ensure_future(_until_disconnected(request.receive))
    try:
        await asyncio.wait((wait, gone, refused), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wait, gone, refused):
            task.cancel()
        # All ended before this returns: the waiter is forgotten in the wait's ``finally``.
        await asyncio.gather(wait, gone, refused, return_exceptions=True)
    if gone.done() and not gone.cancelled() and gone.exception() is None:
        return None
    return True if refused.done() and not refused.cancelled() else wait.result()


def routes(services: Services) -> list[Route]:
    metrics.LIVE_WAITERS.set_function(services.live.waiting)
    assert services.accounts.cache is not None  # the container always makes one
    access = EpochSample(services.accounts.cache.epoch, REVOCATION_CHECK_S)

    async def live_sessions(request: Request) -> Response:
        try:
            known = known_version(request)
            creds = credentials(request)
            seen = access.current()  # before the check: any change after it shows as a move
            principal = await caller(services, creds)
            waited = await wait_or_leave(services, request, principal, known,
                                         _until_refused(services, creds, access, seen))
            if waited is None:
                return Response(status_code=204)  # nobody reads it
            principal = await caller(services, creds)  # again: a revocation while it waited ends it here
            version = services.live.version(principal.user_id)  # before the sessions, never after
            views = await own_sessions(services, principal)
        except WorkbenchError as exc:
            return api_error(exc, headers=NO_STORE, where=f"GET {PATH}")
        body = (b'{"version":' + encode(version) + b',"busy":' + (b"false" if waited else b"true")
                + b',"sessions":[' + b",".join(view.raw for view in views) + b"]}")
        return Response(body, media_type="application/json", headers=NO_STORE)

    return [Route(PATH, live_sessions, methods=["GET"])]
