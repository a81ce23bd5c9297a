"""The one writer of a session's state: every change is checked against ``states.ALLOWED`` and stored with
its time (``sessions.last_state_updated``) and reason (a ``session_transitions`` row), in one transaction.

An illegal move is a bug: it is logged and raised (``IllegalTransition``), and nothing is written. A writer
that read the session's state before may say which state it moves it from (``expect``): when another writer
moved it first (a stop ended it while the watch saw its IDE exit), the move is refused the same way
(``SessionMoved``), logged as the lost race it is, and what the other wrote stands.
tests/test_session_states.py checks that no other module of the package writes ``Session.state``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from openworkbench import metrics
from openworkbench.errors import IllegalTransition, NotFound, SessionMoved
from openworkbench.sessions.states import INITIAL, SessionState, check
from openworkbench.store import Store
from openworkbench.store.schema import Session, SessionTransition, User, utcnow

log = logging.getLogger(__name__)
# Called in the transition's transaction with the written row and its owner: what must change with the state
# (the proxy's route, proxy/routes.py) commits with it or not at all.
Then = Callable[[Session, str, Db], None]
REASON_MAX = 2000  # a reason quotes a job's or an IDE's message: bounded like status_detail


def create(db: Db, reason: str, **fields: Any) -> Session:
    """Add a new session, in ``INITIAL`` state, to ``db``'s transaction."""
    row = Session(state=INITIAL.value, **fields)
    db.add(row)
    db.flush()  # the row first: its history row refers to it
    db.add(SessionTransition(session_id=row.id, from_state=None, to_state=INITIAL.value, at=row.last_state_updated
                             or utcnow(), reason=reason[:REASON_MAX]))
    return row


def write(db: Db, row: Session, to: SessionState, reason: str, expect: SessionState | None = None,
          **fields: Any) -> Session:
    """Move ``row`` (loaded in ``db``) to ``to`` and set ``fields``, in the caller's transaction; with ``expect``,
    only from that state (else ``SessionMoved``)."""
    if expect is not None and row.state != expect:
        log.info("session %s is %s, no longer %s: it does not become %s (reason: %s)", row.id, row.state, expect,
                 to, reason)
        raise SessionMoved(f"session '{row.id}' is {row.state}, no longer {expect}; it does not become {to}")
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

    def transition(self, session_id: str, to: SessionState, reason: str, *, expect: SessionState | None = None,
                   then: Then | None = None, **fields: Any) -> tuple[Session, str]:
        """Move the session to ``to`` (with ``fields``) in a transaction of its own; the row and its owner.
        ``expect``: only from that state (``write``); ``then``: run in the same transaction after the write.

        The row is locked for the check and the write (PostgreSQL), so two writers cannot both move it
        from the same state.
        """
        with self.store.session() as db:
            row = db.get(Session, session_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no session '{session_id}'")
            write(db, row, to, reason, expect, **fields)
            owner = db.scalar(select(User.username).where(User.id == row.user_id)) or ""
            if then is not None:
                then(row, owner, db)
            return row, owner

    def history(self, session_id: str) -> list[SessionTransition]:
        """The session's transitions, oldest first."""
        query = select(SessionTransition).where(SessionTransition.session_id == session_id)
        with self.store.session() as db:
            return list(db.scalars(query.order_by(SessionTransition.id)))
