"""The routing table: every HTTP and WebSocket entry point of the server, in the order they are matched.

| Path                          | Verbs / kind          | Endpoint                                      |
|-------------------------------|-----------------------|-----------------------------------------------|
| ``/api/openapi.json``         | GET                   | the OpenAPI document (api/openapi.py)         |
| ``/api/{method}``             | GET, POST             | the RPC (api/rpc.py ``RpcEndpoint``)          |
| any path on ``<part>.<domain>`` | HTTP, WebSocket     | that session alone (api/session_routes.py)    |
| ``/s/{part}``, ``/s/{part}/…`` | any verb             | the proxy (api/session_routes.py)             |
| ``/s/{part}/…``               | WebSocket             | the proxy                                     |
| ``/metrics``                  | GET                   | Prometheus (api/metrics_route.py)             |
| ``/healthz``                  | GET, HEAD             | a load balancer's health check (api/health.py) |
| ``/docs``, ``/docs/assets/…`` | GET                   | Swagger UI (api/openapi.py)                   |
| ``/static/…``                 | GET                   | the pages' files                              |
| ``/auth/sign-in``, ``/auth/sign-out`` | GET, POST     | sign-in (web/signin.py)                       |
| ``/``, ``/jobs/{id}``, ``/tokens``, ``/admin``, ``/admin/users`` | GET, POST | the pages (web/pages.py) |
| ``/live/sessions``            | GET (long-poll)       | the homepage's live updates (web/live.py)     |

The RPC comes first (the hottest route, answered on any host, as before session origins existed); the session
origins' route comes before every other one: such a host serves its session and nothing else. Middleware is
only for what crosses every route (api/app.py): forwarded headers, metrics, security headers, the error boundary.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route

from openworkbench.api import health, metrics_route, openapi
from openworkbench.api.methods import METHODS
from openworkbench.api.rpc import RpcEndpoint
from openworkbench.api.session_routes import ProxyRoutes
from openworkbench.services.container import Services
from openworkbench.web import live, pages, signin
from openworkbench.web.templating import STATIC_PATH, static_files


def routing_table(services: Services) -> list[BaseRoute]:
    document, docs_page, docs_assets = openapi.routes(METHODS)
    return [
        document,  # before /api/{method}: /api/openapi.json is not a method
        Route("/api/{method}", RpcEndpoint(services, METHODS), methods=["GET", "POST"]),
        *ProxyRoutes(services).routes(),
        metrics_route.route(services),
        health.route(),
        docs_page,
        docs_assets,
        Mount(STATIC_PATH, static_files(), name="static"),
        *signin.routes(services),
        *pages.routes(services),
        *live.routes(services),  # the homepage's long-poll (web/live.py)
    ]
