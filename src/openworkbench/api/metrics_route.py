"""``GET /metrics``: the Prometheus exposition, for an admin-level token or the configured metrics token."""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openworkbench import metrics
from openworkbench.auth.permissions import Action, allowed
from openworkbench.auth.tokens import parse_authorization
from openworkbench.errors import PermissionDenied, Unauthenticated, WorkbenchError
from openworkbench.http_errors import api_error
from openworkbench.services.container import Services


def check_scraper(services: Services, authorization: str | None) -> None:
    """Let in the metrics token or an admin-level API token; raise the refusal otherwise."""
    expected = services.settings.server.metrics_token
    token = parse_authorization(authorization)
    if expected and token is not None and hmac.compare_digest(token.encode(), expected.encode()):
        return
    principal = services.accounts.authenticate(authorization)
    if not allowed(principal, Action.LIST_USERS):
        raise PermissionDenied("Permission denied: /metrics needs an admin-level token or server.metrics_token")


def route(services: Services) -> Route:
    metrics.STORE.store = services.store

    async def scrape(request: Request) -> Response:
        try:
            await run_in_threadpool(check_scraper, services, request.headers.get("authorization"))
        except WorkbenchError as exc:
            if isinstance(exc, Unauthenticated):
                metrics.count_auth_failure("metrics")
            return api_error(exc, where="GET /metrics")
        metrics.count_tasks()
        body = await run_in_threadpool(generate_latest, metrics.REGISTRY)  # counts read from the store
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", scrape, methods=["GET"])
