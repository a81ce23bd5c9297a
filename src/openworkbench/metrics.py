"""Prometheus metrics, served at ``/metrics`` (api/metrics_route.py).

Counts of sessions and jobs are read from the store at scrape time (one GROUP BY each), so they never drift
from the truth; events (API calls, proxy requests, refused credentials, start latencies) are counters and
histograms bumped where they happen. Label children on the hot paths are bound once and kept: a request
costs a dict lookup and an ``inc()``.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openworkbench.store import Store
from openworkbench.store.schema import Job, Session

disable_created_metrics()  # type: ignore[no-untyped-call] # no *_created series: half the output, and nothing a dashboard here uses
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # the server's CPU, memory and open files
UNKNOWN_METHOD = "(unknown)"  # every unknown method name shares one label: no label per garbage path

API_REQUESTS = Counter("openworkbench_api_requests", "RPC calls by method and outcome (ok, or the error's kind)",
                       ["method", "outcome"], registry=REGISTRY)
AUTH_FAILURES = Counter("openworkbench_auth_failures", "Refused credentials, by where they were presented",
                        ["where"], registry=REGISTRY)
PROXY_REQUESTS = Counter("openworkbench_proxy_requests", "Requests to /s/<session>/, by kind and status class",
                         ["kind", "status"], registry=REGISTRY)
PROXY_SECONDS = Histogram("openworkbench_proxy_request_duration_seconds",
                          "Time to answer a proxied HTTP request, until its body was sent", registry=REGISTRY,
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SESSION_START = Histogram("openworkbench_session_start_seconds",
                          "From launch_session (or resume_session) to the session running",
                          ["ide", "cluster", "kind"], registry=REGISTRY,
                          buckets=(1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, 1800))
JOB_START = Histogram("openworkbench_job_start_seconds", "From launch_job to the job running (Pending to Running)",
                      ["cluster"], registry=REGISTRY,
                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600))
# What a leak of the event loop or of worker threads would grow (the soak test samples them with process_*).
ASYNCIO_TASKS = Gauge("openworkbench_asyncio_tasks", "Tasks of the server's event loop that have not ended",
                      registry=REGISTRY)
THREADS = Gauge("openworkbench_threads", "Threads of the server process (the OS's count: Python's and native ones)",
                registry=REGISTRY)
LIVE_WAITERS = Gauge("openworkbench_live_waiters", "Homepage long-polls waiting for a change of sessions",
                     registry=REGISTRY)

_api: dict[tuple[str, str], Any] = {}
_outcomes: dict[type, str] = {}
_auth = {where: AUTH_FAILURES.labels(where) for where in ("api", "proxy", "sign_in", "metrics")}
_proxy: dict[tuple[str, str], Any] = {}


def outcome_of(error: type | None) -> str:
    """``ok``, or the error class as snake_case: ``not_found``, ``unauthenticated``, ..."""
    if error is None:
        return "ok"
    name = _outcomes.get(error)
    if name is None:
        name = _outcomes[error] = re.sub(r"(?<!^)(?=[A-Z])", "_", error.__name__).lower()
    return name


def count_api(method: str, error: type | None = None) -> None:
    """One RPC call; ``method`` must be a known method's name or UNKNOWN_METHOD."""
    key = (method, outcome_of(error))
    child = _api.get(key)
    if child is None:
        child = _api[key] = API_REQUESTS.labels(*key)
    child.inc()
    if key[1] == "unauthenticated":
        _auth["api"].inc()


def _thread_count() -> float:
    try:
        return float(len(os.listdir("/proc/self/task")))
    except OSError:  # no procfs: Python's own threads only
        return float(threading.active_count())


THREADS.set_function(_thread_count)


def count_tasks() -> None:
    """Count the running loop's tasks; called on the loop when scraped (all_tasks is not for other threads)."""
    ASYNCIO_TASKS.set(len(asyncio.all_tasks()))


def count_auth_failure(where: str) -> None:
    _auth[where].inc()


def _proxy_child(kind: str, status: str) -> Any:
    child = _proxy.get((kind, status))
    if child is None:
        child = _proxy[(kind, status)] = PROXY_REQUESTS.labels(kind, status)
    return child


def _seconds_since(when: datetime) -> float:
    return (datetime.now(UTC) - (when if when.tzinfo else when.replace(tzinfo=UTC))).total_seconds()


def job_started(cluster: str, submitted: datetime) -> None:
    JOB_START.labels(cluster).observe(max(0.0, _seconds_since(submitted)))


def session_running(ide: str, cluster: str, previous_state: str, created: datetime, state_since: datetime) -> None:
    """A session has just become running: from its launch, or from the start of its resume."""
    resuming = previous_state == "resuming"  # SessionState.RESUMING (metrics imports no sessions code)
    began = state_since if resuming else created
    SESSION_START.labels(ide, cluster, "resume" if resuming else "launch").observe(max(0.0, _seconds_since(began)))


class StoreCollector(Collector):
    """Sessions by state and IDE, jobs by status and cluster: counted in the store when scraped."""

    def __init__(self) -> None:
        self.store: Store | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sessions = GaugeMetricFamily("openworkbench_sessions", "Sessions by state and IDE", labels=["state", "ide"])
        jobs = GaugeMetricFamily("openworkbench_jobs", "Jobs by status and cluster", labels=["status", "cluster"])
        if self.store is not None:
            with self.store.session() as db:
                query = select(Session.state, Session.workbench, func.count()).group_by(Session.state,
                                                                                         Session.workbench)
                for state, ide, count in db.execute(query):
                    sessions.add_metric([state, ide], count)
                query = select(Job.status, Job.cluster, func.count()).group_by(Job.status, Job.cluster)
                for status, cluster, count in db.execute(query):
                    jobs.add_metric([status, cluster], count)
        yield sessions
        yield jobs

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # names are fixed; nothing is collected at registration


STORE = StoreCollector()
REGISTRY.register(STORE)


class HttpMetrics:
    """In front of the proxy and the sign-in page: times proxied requests and counts refused credentials."""

    def __init__(self, app: ASGIApp, session_host: Callable[[str | None], str | None] | None = None) -> None:
        self.app = app
        # With per-session origins (server.session_domain), a session is also served at <part>.<domain>/.
        self.session_host = session_host

    def _proxied(self, scope: Scope, path: str) -> bool:
        if path.startswith("/s/"):
            return True
        return self.session_host is not None and self.session_host(Headers(scope=scope).get("host")) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and self._proxied(scope, path):
            if scope["type"] == "http":
                await self._http(scope, receive, send)
                return
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
                return
        if scope["type"] == "http" and path == "/auth/sign-in" and scope["method"] == "POST":
            await self._sign_in(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        began, status, refused = time.perf_counter(), [500], [False]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                # A browser without a sign-in is sent to the sign-in page instead of a 401.
                refused[0] = status[0] == 401 or (status[0] == 302 and _to_sign_in(message))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            PROXY_SECONDS.observe(time.perf_counter() - began)
            _proxy_child("http", f"{status[0] // 100}xx").inc()
            if refused[0]:
                _auth["proxy"].inc()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = ["closed"]

        async def sending(message: Message) -> None:
            if outcome[0] == "closed":  # the first message says whether the handshake was accepted
                outcome[0] = "accepted" if message["type"] == "websocket.accept" else "refused"
                _proxy_child("websocket", outcome[0]).inc()
                if message.get("code") == 4401:
                    _auth["proxy"].inc()
            await send(message)

        await self.app(scope, receive, sending)

    async def _sign_in(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                _auth["sign_in"].inc()
            await send(message)

        await self.app(scope, receive, sending)


def _to_sign_in(start: Message) -> bool:
    return any(name == b"location" and value.startswith(b"/auth/sign-in") for name, value in start["headers"])
