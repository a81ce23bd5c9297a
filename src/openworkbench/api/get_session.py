"""``get_session``: the user's sessions, their active jobs, and ``timestamp`` deltas, answered as joined bytes.

Every answer carries ``timestamp``, the server's clock (float seconds) taken before anything was read. A
request that passes it back gets only the sessions and jobs written after it, with the ids of those that
left the list since (``removed_session_ids``, ``removed_job_ids``): a poller's cost follows what changed.
Ended sessions leave the plain list ``sessions.expiry_hours`` after they ended; jobs, see ``job_views``.
"""

from __future__ import annotations

import time

from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from openworkbench.api import params as p
from openworkbench.auth.permissions import Principal
from openworkbench.services.container import Services
from openworkbench.services.job_views import JobAnswer
from openworkbench.services.readthrough import store_allowed
from openworkbench.sessions.api_json import select_fields
from openworkbench.sessions.states import ENDED
from openworkbench.sessions.views import REMOVED_HORIZON, View, encode

LARGE = 64 * 1024  # a part this big is sent as it is, never copied into the answer


class PartsResponse(Response):
    """An answer sent as its parts: the cached job list (7 MB at 10,000 jobs) goes out as the very bytes
    object kept in memory. Joining it into one body cost a fresh 7 MB allocation per request (half the
    server's time at 10,000 jobs) and left the heap holding those transients (RSS)."""

    def __init__(self, parts: list[bytes]) -> None:
        self.chunks: list[bytes] = []
        small: list[bytes] = []
        for part in parts:
            if len(part) < LARGE:
                small.append(part)
                continue
            self.chunks += [b"".join(small), part]
            small = []
        self.chunks.append(b"".join(small))
        self.chunks = [chunk for chunk in self.chunks if chunk]
        super().__init__(None, media_type="application/json",
                         headers={"content-length": str(sum(map(len, self.chunks)))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.chunks) - 1
        for n, chunk in enumerate(self.chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": n < last})


def get_session(services: Services, principal: Principal, params: p.GetSession) -> Response:
    """One read through the caches of sessions and jobs. The RPC tries it on the event loop first (memory
    alone, ``readthrough.memory_only``) and again in a thread when a cache needs the store (``NeedsStore``)."""
    now = time.time()
    username = params.user or principal.username
    views = _session_views(services, principal, params, username)
    jobs = None
    if params.include_jobs or params.include_all_jobs:
        shown = _shown(services, views, params, now)
        session_ids = None if params.include_all_jobs else [view.data["id"] for view in shown]
        jobs = services.job_views.answer(username, session_ids, params.timestamp, now)
    projects = None
    if params.include_projects:
        store_allowed()  # the store's view of the user's projects
        projects = encode(services.sessions.projects(principal, username))
    return _response(services, views, jobs, params, now, projects, username)


def _session_views(services: Services, principal: Principal, params: p.GetSession, username: str) -> list[View]:
    """The sessions through their cache: memory when it can answer, else the store."""
    views = services.sessions.read(principal, params.user, params.session_id, from_store=False)
    if views is None:
        store_allowed()
        views = services.sessions.read(principal, username, params.session_id)
    return views


def _shown(services: Services, views: list[View], params: p.GetSession, now: float) -> list[View]:
    """The listed sessions: asked by id, all of them; else those not rotated out."""
    if params.session_id:
        return views
    expiry = services.settings.sessions.expiry_hours * 3600
    return [view for view in views if _left_at(view, expiry) >= now]


def _left_at(view: View, expiry: float) -> float:
    """When an ended session leaves the plain list (never, for the others)."""
    if view.data["activity_state"] not in ENDED:
        return float("inf")
    return float(view.data["last_state_updated"]) / 1000 + expiry


def _response(services: Services, views: list[View], jobs: JobAnswer | None, params: p.GetSession,
              now: float, projects: bytes | None, username: str) -> Response:
    shown, since = _shown(services, views, params, now), params.timestamp
    removed: list[str] = []
    if since is not None:
        changed_at = services.sessions.views.changed_at
        shown = [view for view in shown if changed_at(view.data["id"]) > since]
        if not params.session_id and since < now - REMOVED_HORIZON:  # older than memory keeps (views.py)
            store_allowed()
            removed = services.sessions.left_in_store(username, since, now)
        elif not params.session_id:
            expiry = services.settings.sessions.expiry_hours * 3600
            removed = [view.data["id"] for view in views if since < _left_at(view, expiry) < now]
    if params.fields:
        sessions = [encode(select_fields(view.data, params.fields)) for view in shown]
    else:
        sessions = [view.raw for view in shown]  # each session's JSON was encoded once, when it was cached
    parts = [b'{"result":{"sessions":[', b",".join(sessions), b"]"]
    if jobs is not None:
        parts += [b',"jobs":', jobs.raw]
    if projects is not None:
        parts += [b',"projects":', projects]
    parts += [b',"timestamp":', encode(now)]
    if since is not None:
        parts += [b',"removed_session_ids":', encode(removed)]
        if jobs is not None:
            parts += [b',"removed_job_ids":', encode(jobs.left)]
    parts.append(b"}}")
    return PartsResponse(parts)
