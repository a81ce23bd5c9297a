"""The ASGI application: the routing table behind the cross-cutting middleware, and the job monitor."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.routing import Router

from openworkbench.api.boundary import ErrorBoundary
from openworkbench.api.forwarded import TrustedProxies
from openworkbench.api.routes import routing_table
from openworkbench.config import Settings
from openworkbench.metrics import HttpMetrics
from openworkbench.services.container import Services, build_services
from openworkbench.web.headers import SecurityHeaders

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
    async def lifespan(app: object) -> AsyncIterator[None]:
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

    # One routing table (api/routes.py); the middleware is what crosses every route. Outermost:
    # X-Forwarded-* is settled (believed or removed) before anything reads Host or the client.
    router = Router(routing_table(services), lifespan=lifespan)
    app = HttpMetrics(SecurityHeaders(ErrorBoundary(router)), services.origins.part_of if services.origins else None)
    return TrustedProxies(app, settings.server.trusted_proxies)
