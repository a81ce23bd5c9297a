"""``get_historical_session``: ended sessions and jobs, filtered on their end time.

A job's end time is ``jobs.end_time`` (set when it became final); an ended session's is the time it
reached its final state. Both are indexed (migration 0005), with the owner first for one user's history,
so a one-day window stays a range scan however many jobs ever ran.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Select, Table, select

from openworkbench.auth.permissions import Action, Principal, require
from openworkbench.services.job_json import job_json
from openworkbench.services.session_json import FINAL_STATES, session_json
from openworkbench.services.session_views import encode
from openworkbench.store import Store
from openworkbench.store.schema import Job, Session, User

ENDED_SESSIONS = sorted(FINAL_STATES - {"suspended"})  # a suspended session has not ended: it can resume
Q = TypeVar("Q", bound=Select[Any, Any])
_JOBS, _USERS = cast(Table, Job.__table__), cast(Table, User.__table__)


class History:
    def __init__(self, store: Store) -> None:
        self.store = store

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
        # Core rows, not ORM objects: for thousands of rows the unit of work costs more than the SQL.
        query = select(_JOBS, _USERS.c.username).join(_USERS).where(_JOBS.c.end_time.is_not(None))
        query = _window(query, _JOBS.c.end_time, begin, end)
        if owner is not None:
            user_id = select(_USERS.c.id).where(_USERS.c.username == owner).scalar_subquery()
            query = query.where(_JOBS.c.user_id == user_id)  # the (user_id, end_time) index
        with self.store.transaction() as conn:
            rows = conn.execute(query.order_by(_JOBS.c.end_time, _JOBS.c.id)).all()
        # A row has the columns job_json reads, by name, as a Job has.
        return [encode(job_json(cast(Job, row), row.username)) for row in rows]


def _window(query: Q, column: Any, begin: datetime | None, end: datetime | None) -> Q:
    if begin is not None:
        query = query.where(column >= begin)
    if end is not None:
        query = query.where(column <= end)
    return query
