"""The one writer of a session's state: every change is checked against ``states.ALLOWED`` and stored with
its time (``sessions.last_state_updated``) and reason (a ``session_transitions`` row), in one transaction.

An illegal move is a bug: it is logged and raised (``IllegalTransition``), and nothing is written.
tests/test_session_states.py checks that no other module of the package writes ``Session.state``.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from openworkbench import metrics
from openworkbench.errors import IllegalTransition, NotFound
from openworkbench.sessions.states import INITIAL, SessionState, check
from openworkbench.store import Store
from openworkbench.store.schema import Session, SessionTransition, User, utcnow

log = logging.getLogger(__name__)
REASON_MAX = 2000  # a reason quotes a job's or an IDE's message: bounded like status_detail


def create(db: Db, reason: str, **fields: Any) -> Session:
    """Add a new session, in ``INITIAL`` state, to ``db``'s transaction."""
    row = Session(state=INITIAL.value, **fields)
    db.add(row)
    db.flush()  # the row first: its history row refers to it
    db.add(SessionTransition(session_id=row.id, from_state=None, to_state=INITIAL.value, at=row.last_state_updated
                             or utcnow(), reason=reason[:REASON_MAX]))
    return row


def write(db: Db, row: Session, to: SessionState, reason: str, **fields: Any) -> Session:
    """Move ``row`` (loaded in ``db``) to ``to`` and set ``fields``, in the caller's transaction."""
    try:
        current = check(row.id, row.state, to)
    except IllegalTransition as exc:
        log.error("%s (reason: %s)", exc.message, reason)
        raise
    now = utcnow()
    if to is SessionState.RUNNING:
        metrics.session_running(row.workbench, row.cluster, row.state, row.created, row.last_state_updated)
    row.state, row.last_state_updated = to.value, now
    for key, value in fields.items():
        setattr(row, key, value)
    db.add(SessionTransition(session_id=row.id, from_state=current, to_state=to.value, at=now,
                             reason=reason[:REASON_MAX]))
    return row


class Transitions:
    def __init__(self, store: Store) -> None:
        self.store = store

    def transition(self, session_id: str, to: SessionState, reason: str, **fields: Any) -> tuple[Session, str]:
        """Move the session to ``to`` (with ``fields``) in a transaction of its own; the row and its owner.

        The row is locked for the check and the write (PostgreSQL), so two writers cannot both move it
        from the same state.
        """
        with self.store.session() as db:
            row = db.get(Session, session_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no session '{session_id}'")
            write(db, row, to, reason, **fields)
            owner = db.scalar(select(User.username).where(User.id == row.user_id)) or ""
            return row, owner

    def history(self, session_id: str) -> list[SessionTransition]:
        """The session's transitions, oldest first."""
        query = select(SessionTransition).where(SessionTransition.session_id == session_id)
        with self.store.session() as db:
            return list(db.scalars(query.order_by(SessionTransition.id)))
