"""The Admin page's view of every user's sessions and jobs, filtered, newest first.

The API answers one user at a time (``get_session user=``); an admin looking after a server wants them all at
once, so this reads the store directly, behind the same permission module (``Action.READ_ALL_USERS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from openworkbench.auth.permissions import Action, Principal, require
from openworkbench.services.job_json import job_json
from openworkbench.sessions.api_json import session_json
from openworkbench.store import Store
from openworkbench.store.schema import Job, Session, User

MAX_ROWS = 500  # a page shows the newest this many of each; filters narrow it down


@dataclass(frozen=True)
class Filters:
    user: str = ""
    state: str = ""  # a session's activity_state or a job's status
    ide: str = ""


def all_sessions(store: Store, principal: Principal, filters: Filters) -> list[dict[str, Any]]:
    require(principal, Action.READ_ALL_USERS)
    query = select(Session, User.username).join(User)
    if filters.user:
        query = query.where(User.username == filters.user)
    if filters.state:
        query = query.where(Session.state == filters.state)
    if filters.ide:
        query = query.where(Session.workbench == filters.ide)
    with store.session() as db:
        rows = db.execute(query.order_by(Session.created.desc()).limit(MAX_ROWS)).all()
        return [session_json(row, owner) for row, owner in rows]


def all_jobs(store: Store, principal: Principal, filters: Filters) -> list[dict[str, Any]]:
    """Jobs launched as jobs (a session's own IDE job is shown as its session)."""
    require(principal, Action.READ_ALL_USERS)
    query = select(Job, User.username).join(User).where(Job.session_id.is_(None))
    if filters.user:
        query = query.where(User.username == filters.user)
    if filters.state:
        query = query.where(Job.status == filters.state)
    with store.session() as db:
        rows = db.execute(query.order_by(Job.submission_time.desc()).limit(MAX_ROWS)).all()
        return [job_json(job, owner) for job, owner in rows]
