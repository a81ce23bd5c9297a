"""The ASGI application: RPC routes, the job monitor, and error bodies for every failure."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from openworkbench.api.forwarded import TrustedProxies
from openworkbench.api.methods import METHODS
from openworkbench.api.metrics_route import install as install_metrics
from openworkbench.api.openapi import install as install_docs
from openworkbench.api.rpc import RpcRoutes, dispatch, error_response, internal_error_response
from openworkbench.api.session_routes import SessionRoutes
from openworkbench.config import Settings
from openworkbench.errors import StoreUnavailable
from openworkbench.metrics import HttpMetrics
from openworkbench.services.container import Services, build_services
from openworkbench.web import pages
from openworkbench.web.headers import SecurityHeaders
from openworkbench.web.signin import router as signin_pages
from openworkbench.web.templating import STATIC_PATH, static_files

log = logging.getLogger(__name__)


class Monitor:
    """Threads that poll the clusters for job state at the configured interval, one per cluster: a
    scheduler that hangs (a 30 s squeue timeout) must not hold up the others' updates."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.interval = services.settings.local.poll_interval_ms / 1000
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,), name=f"job-monitor-{name}", daemon=True)
                         for name in services.clusters]

    def start(self) -> None:
        adopted = self.services.jobs.adopt()
        self.services.jobs.poll_once()  # fresh job states before sessions are re-adopted
        if adopted:
            log.info("following %d job(s) started before this server", adopted)
        for thread in self._threads:
            thread.start()

    def _run(self, cluster: str) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.services.jobs.poll_once(cluster)
            except Exception:  # one bad poll must not end monitoring
                log.exception("job monitor poll of cluster %s failed", cluster)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


def create_app(settings: Settings) -> TrustedProxies:
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        monitor = Monitor(services)
        monitor.start()
        services.job_views.refresh()  # the active job list in memory before the first poll asks for it
        services.retention.start()
        await services.watch.adopt()
        watcher = asyncio.get_running_loop().create_task(services.watch.run())
        try:
            yield
        finally:
            watcher.cancel()
            await services.runner.close()
            await services.pool.close()
            monitor.stop()
            services.retention.stop()
            services.close()

    app = FastAPI(title="Open Workbench", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = services
    install_docs(app, METHODS)  # before /api/{method}: /api/openapi.json is not a method
    install_metrics(app, services)

    # RpcRoutes answers GET and POST before this route is reached; it stays so that other verbs get 405.
    @app.api_route("/api/{method}", methods=["GET", "POST"])
    async def rpc(method: str, request: Request) -> Response:
        return await dispatch(services, METHODS, method, request, settings.server.max_body_bytes)

    app.include_router(signin_pages(services))
    app.include_router(pages.router(services))
    app.mount(STATIC_PATH, static_files(), name="static")
    # The server's own pages only: the RPC and the proxy answer in front of this app (below).
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.status_code, "message": str(exc.detail)}}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": {"code": 400, "message": "invalid request"}}, 400)

    @app.exception_handler(StoreUnavailable)  # a page's store read while the database is away: 503, no traceback
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return internal_error_response()

    # The RPC at /api/ and the proxy at /s/ sit in front of FastAPI (their hot paths skip its routing and
    # middleware); the rest (sign-in pages, other verbs' 405s) is the app.
    session_host = services.origins.part_of if services.origins else None
    routes = RpcRoutes(HttpMetrics(SessionRoutes(app, services), session_host), services, METHODS)
    # Outermost: X-Forwarded-* is settled (believed or removed) before anything reads Host or the client.
    return TrustedProxies(routes, settings.server.trusted_proxies)
