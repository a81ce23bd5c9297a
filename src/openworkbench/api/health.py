"""``GET /healthz``: a load balancer's health check. Unauthenticated, answered on the event loop, and it
touches no store: it says that this process serves HTTP, nothing more. It does not fail while the database is
away, on purpose: every replica shares the one database, so a check that followed it would take all of them out
of the balancer at once, and clients would get the balancer's bare 503 instead of the API's own error body."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_HEADERS = {"Cache-Control": "no-store"}


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"}, headers=_HEADERS)


def route() -> Route:
    return Route("/healthz", healthz, methods=["GET", "HEAD"])
