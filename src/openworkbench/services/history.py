"""``get_historical_session``: ended sessions and jobs, filtered on their end time.

A job's end time is ``jobs.end_time`` (set when it became final); an ended session's is the time it
reached its final state. Both are indexed (migration 0005), with the owner first for one user's history,
so a one-day window stays a range scan however many jobs ever ran.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Select, Table, select

from openworkbench.auth.permissions import Action, Principal, require
from openworkbench.services.job_json import job_json
from openworkbench.sessions.api_json import session_json
from openworkbench.sessions.states import ENDED
from openworkbench.sessions.views import encode
from openworkbench.store import Store
from openworkbench.store.schema import Job, Session, User

ENDED_SESSIONS = sorted(state.value for state in ENDED)  # a suspended session has not ended: it can resume
Q = TypeVar("Q", bound=Select[Any, Any])
_JOBS, _USERS = cast(Table, Job.__table__), cast(Table, User.__table__)
RENDERED = 20_000  # ended jobs' JSON kept (~15 MB): a day's window of a busy server, asked again and again
BATCH = 500  # ids per query: well below any database's limit of bound parameters
# What job_json reads: not cluster_state, whose JSON would be decoded for nothing.
_ROWS = select(*(_JOBS.c[name] for name in (
    "id", "name", "cluster", "status", "status_message", "exit_code", "pid", "host", "spec", "stdout_file",
    "stderr_file", "session_id", "submission_time", "last_update_time", "running_time", "end_time")),
    _USERS.c.username).join(_USERS)


class History:
    """Ended jobs never change (a final status is final), so their JSON is rendered once and kept, up to
    ``RENDERED`` of them; a commit that writes one drops it all the same (``written``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rendered: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def written(self, objects: list[Any]) -> None:
        """The store's commit hook."""
        touched = [obj for obj in objects if obj is Job or isinstance(obj, Job)]
        with self._lock:
            for obj in touched:
                if not isinstance(obj, Job):
                    self._rendered.clear()
                    return
                self._rendered.pop(obj.id, None)

    def read(self, principal: Principal, begin: datetime | None, end: datetime | None, include_jobs: bool,
             all_users: bool) -> bytes:
        """The answer's ``result`` as JSON bytes: ``{"sessions": [...], "jobs": [...]}``, oldest end first."""
        if all_users:
            require(principal, Action.READ_ALL_USERS)
        owner = None if all_users else principal.username
        sessions = self._sessions(owner, begin, end)
        jobs = self._jobs(owner, begin, end) if include_jobs else []
        return (b'{"sessions":[' + b",".join(sessions) + b'],"jobs":[' + b",".join(jobs) + b"]}")

    def _sessions(self, owner: str | None, begin: datetime | None, end: datetime | None) -> list[bytes]:
        query = select(Session, User.username).join(User).where(Session.state.in_(ENDED_SESSIONS))
        query = _window(query, Session.last_state_updated, begin, end)
        if owner is not None:
            query = query.where(User.username == owner)
        with self.store.session() as db:
            rows = db.execute(query.order_by(Session.last_state_updated, Session.id)).all()
            return [encode(session_json(row[0], row[1])) for row in rows]

    def _jobs(self, owner: str | None, begin: datetime | None, end: datetime | None) -> list[bytes]:
        # The window's ids from the (user_id, end_time) or end_time index; only jobs not rendered yet are read.
        query = select(_JOBS.c.id).where(_JOBS.c.end_time.is_not(None))
        query = _window(query, _JOBS.c.end_time, begin, end)
        if owner is not None:
            user_id = select(_USERS.c.id).where(_USERS.c.username == owner).scalar_subquery()
            query = query.where(_JOBS.c.user_id == user_id)
        with self.store.transaction() as conn:
            ids = list(conn.scalars(query.order_by(_JOBS.c.end_time, _JOBS.c.id)))
            with self._lock:
                found = {job_id: raw for job_id in ids if (raw := self._rendered.get(job_id)) is not None}
            missing = [job_id for job_id in ids if job_id not in found]
            for start in range(0, len(missing), BATCH):
                rows = conn.execute(_ROWS.where(_JOBS.c.id.in_(missing[start:start + BATCH]))).all()
                # A row has the columns job_json reads, by name, as a Job has.
                found.update((row.id, encode(job_json(cast(Job, row), row.username))) for row in rows)
        with self._lock:
            for job_id in missing:
                if job_id in found:
                    self._rendered[job_id] = found[job_id]
            while len(self._rendered) > RENDERED:
                self._rendered.popitem(last=False)
        return [found[job_id] for job_id in ids if job_id in found]


def _window(query: Q, column: Any, begin: datetime | None, end: datetime | None) -> Q:
    if begin is not None:
        query = query.where(column >= begin)
    if end is not None:
        query = query.where(column <= end)
    return query
