"""The store's integrity check (``workbench store check``): the database's own, then the app's invariants.

Run after a crash, it tells whether the store is as the server left it in one piece: SQLite's
``integrity_check`` and ``foreign_key_check`` (PostgreSQL keeps its pages checksummed and its constraints
enforced, so there only constraints left unvalidated are reported), every foreign key's rows found by a
query on both databases, then what the server itself relies on. Rows that a running server may hold
in-between for a moment (a job recorded but not yet handed to its cluster) count only once older than
``settle_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, func, or_, select, text
from sqlalchemy.exc import SQLAlchemyError

from openworkbench.clusters.base import ACTIVE_STATUSES, FINAL_STATUSES
from openworkbench.errors import StoreError
from openworkbench.store.db import Store
from openworkbench.store.schema import AuthEpoch, Base, BrowserSession, Job, Session, utcnow

SESSION_FINAL = ("suspended", "failed", "killed", "finished", "canceled")
SESSION_STATES = (*SESSION_FINAL, "launching", "pending", "starting", "running", "resuming", "suspending",
                  "shutting_down")
SHOWN = 5  # ids quoted per problem; the count says how many there are in all


def check_store(store: Store, settle_s: float = 60.0) -> list[str]:
    """The problems found, one sentence each; empty when the store is sound."""
    try:
        with store.engine.connect() as conn:
            problems = _database(conn, store.is_sqlite)
            if not problems or all(p.startswith("foreign key") for p in problems):
                problems += _invariants(conn, settle_s)
            return problems
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot check the store: {type(exc).__name__}: {exc}") from None


def _database(conn: Connection, sqlite: bool) -> list[str]:
    problems: list[str] = []
    if sqlite:
        found = [row[0] for row in conn.execute(text("PRAGMA integrity_check"))]
        if found != ["ok"]:
            problems += [f"sqlite integrity_check: {line}" for line in found]
        for row in conn.execute(text("PRAGMA foreign_key_check")):
            problems.append(f"foreign key: a row of {row[0]} (rowid {row[1]}) names a missing row of {row[2]}")
    else:
        for table, name in conn.execute(text(
                "SELECT conrelid::regclass::text, conname FROM pg_constraint "
                "WHERE NOT convalidated AND connamespace = current_schema()::regnamespace")):
            problems.append(f"constraint {name} of {table} is not validated")
    for table in Base.metadata.sorted_tables:  # the same on both: what the constraints should guarantee
        problems += _orphans(conn, table)
    return problems


def _orphans(conn: Connection, table: Table) -> list[str]:
    problems = []
    for fk in table.foreign_keys:
        child, parent = fk.parent, fk.column
        query = (select(child).where(child.is_not(None), ~select(parent).where(parent == child).exists()))
        values = [str(row[0]) for row in conn.execute(query.limit(SHOWN))]
        if values:
            problems.append(f"foreign key: {table.name}.{child.name} names missing {parent.table.name} rows: "
                            + ", ".join(values))
    return problems


def _invariants(conn: Connection, settle_s: float) -> list[str]:
    settled = utcnow() - timedelta(seconds=settle_s)
    jobs, sessions, signins = Job.__table__, Session.__table__, BrowserSession.__table__
    job_ids = select(jobs.c.id)
    checks: list[tuple[str, Any, Callable[[Any], str]]] = [
        ("sessions name an IDE job that does not exist",
         select(sessions.c.id).where(sessions.c.job_id.is_not(None), sessions.c.job_id.not_in(job_ids)), str),
        ("jobs name a session that does not exist",
         select(jobs.c.id).where(jobs.c.session_id.is_not(None), jobs.c.session_id.not_in(select(sessions.c.id))),
         str),
        ("jobs have an unknown status",
         select(jobs.c.id).where(jobs.c.status.not_in([*ACTIVE_STATUSES, *FINAL_STATUSES])), str),
        ("sessions have an unknown state", select(sessions.c.id).where(sessions.c.state.not_in(SESSION_STATES)), str),
        ("ended jobs have no end time",
         select(jobs.c.id).where(jobs.c.status.in_(FINAL_STATUSES), jobs.c.end_time.is_(None)), str),
        ("unfinished jobs have an end time",
         select(jobs.c.id).where(jobs.c.status.in_(ACTIVE_STATUSES), jobs.c.end_time.is_not(None)), str),
        # A launch records the job, then hands it to its cluster: a row still without the cluster's id (its
        # output paths) long after is a job the server lost track of.
        ("unfinished jobs were never handed to their cluster",
         select(jobs.c.id).where(jobs.c.status.in_(ACTIVE_STATUSES), jobs.c.stdout_file == "",
                                 jobs.c.submission_time < settled), str),
        ("jobs still run for sessions that have ended",
         select(jobs.c.id).join(sessions, sessions.c.id == jobs.c.session_id)
         .where(jobs.c.status.in_(ACTIVE_STATUSES), sessions.c.state.in_(SESSION_FINAL),
                sessions.c.last_state_updated < settled), str),
        ("running sessions have an IDE job that has ended",
         select(sessions.c.id).join(jobs, jobs.c.id == sessions.c.job_id)
         .where(sessions.c.state == "running", jobs.c.status.in_(FINAL_STATUSES), jobs.c.end_time < settled), str),
        ("browser sign-ins are bound to both or neither of a token and a user",
         select(signins.c.id).where(or_(and_(signins.c.token_id.is_(None), signins.c.user_id.is_(None)),
                                        and_(signins.c.token_id.is_not(None), signins.c.user_id.is_not(None)))),
         str),
    ]
    problems = []
    for what, query, show in checks:
        count = conn.scalar(select(func.count()).select_from(query.subquery()))
        if count:
            shown = ", ".join(show(row[0]) for row in conn.execute(query.limit(SHOWN)))
            problems.append(f"{count} {what}: {shown}{', ...' if count > SHOWN else ''}")
    epochs = conn.scalar(select(func.count()).select_from(AuthEpoch.__table__))
    if epochs != 1:
        problems.append(f"auth_epoch has {epochs} rows, not 1")
    return problems
