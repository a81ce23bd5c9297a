"""The ASGI application: the routing table behind the cross-cutting middleware, and what runs beside it (the
job monitor, the session watch, the relay of other replicas' job changes)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.routing import Router

from openworkbench.api.boundary import ErrorBoundary
from openworkbench.api.forwarded import TrustedProxies
from openworkbench.api.routes import routing_table
from openworkbench.config import Settings
from openworkbench.metrics import HttpMetrics
from openworkbench.services.container import build_services
from openworkbench.services.job_monitor import Monitor
from openworkbench.web.headers import SecurityHeaders

log = logging.getLogger(__name__)
__all__ = ["Monitor", "create_app"]  # Monitor: tests build a server's services in process and monitor them


def create_app(settings: Settings) -> TrustedProxies:
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        if services.relay is not None:
            services.relay.start()  # listening before anything is launched: other replicas' changes reach us
        monitor = Monitor(services)
        if services.relay is not None:
            services.relay.listeners.append(monitor.remote_changes)
        monitor.start()  # takes the roles it can (services/leadership.py), then polls what it leads
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
            services.retention.stop()  # services.close() below gives up the roles and stops the relay
            services.close()

    # One routing table (api/routes.py); the middleware is what crosses every route. Outermost:
    # X-Forwarded-* is settled (believed or removed) before anything reads Host or the client.
    router = Router(routing_table(services), lifespan=lifespan)
    app = HttpMetrics(SecurityHeaders(ErrorBoundary(router)), services.origins.part_of if services.origins else None)
    return TrustedProxies(app, settings.server.trusted_proxies)
