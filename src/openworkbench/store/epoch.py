"""The auth epoch: a number that changes whenever anyone's access changes (migration 0004's triggers).

Caches of sign-ins compare it on every hit, so a revoked token or a disabled user is refused by the
very next request, whichever process made the change: ``current()`` asks the database itself each time
(SQLite: ``PRAGMA data_version`` first; PostgreSQL: a one-row read), never a copy that a message keeps up
to date. It is cheap enough for the event loop; it answers None when it cannot tell, and caches then ask
the store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any, Protocol

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2  # libpq's smallest
STATEMENT_TIMEOUT_MS = 500


class AuthEpoch(Protocol):
    def current(self) -> int | None: ...

    def close(self) -> None: ...


class NoEpoch:
    """For a database no second connection can watch (SQLite in memory): nothing is ever cached."""

    def current(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class SqliteEpoch:
    """Reads the counter on a connection of its own; ``PRAGMA data_version`` (a few µs) tells it whether
    any other connection has committed since, so the counter itself is read only after a commit."""

    def __init__(self, path: str, table: str = "auth_epoch") -> None:
        self._query = f"SELECT value FROM {table} WHERE id = 1"
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._data_version: int | None = None
        self._value: int | None = None

    def current(self) -> int | None:
        with self._lock:
            try:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._data_version:
                    row = self._conn.execute(self._query).fetchone()
                    self._data_version, self._value = version, (row[0] if row else None)
                return self._value
            except sqlite3.Error as exc:
                log.warning("cannot read %s: %s", self._query, exc)
                self._data_version = None
                return None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresEpoch:
    """Reads the counter from the database on every call: one prepared single-row SELECT on an autocommit
    connection of its own. A writer's COMMIT has made the bump visible to every later snapshot by the time
    it returns, so the next check after it sees the change, whatever the load: nothing waits on a message.

    Connections are lent out one caller at a time (the event loop and worker threads all check), and the
    few idle ones are kept. A connection that fails is dropped and the answer is None (the sign-in goes to
    the store); a failed connect is not retried for ``RETRY_AFTER`` s, so a database that is down does not
    make every request wait for a connect.
    """

    KEEP_IDLE = 4  # checks are short: 16 threads checking in a loop never had more than 4 in flight at once
    RETRY_AFTER = 1.0
    QUERY = "SELECT value FROM auth_epoch WHERE id = 1"

    def __init__(self, url: str, table: str = "auth_epoch") -> None:
        self.QUERY = f"SELECT value FROM {table} WHERE id = 1"
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._idle: list[psycopg.Connection[tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._retry_at = 0.0  # time.monotonic() before which no connect is tried
        self._closed = False

    def current(self) -> int | None:
        conn = self._borrow()
        if conn is None:
            return None
        try:
            row = conn.execute(self.QUERY, prepare=True).fetchone()
        except psycopg.Error as exc:
            log.warning("cannot read the auth epoch (sign-ins are checked in the store): %s", exc)
            conn.close()
            return None
        self._give_back(conn)
        return int(row[0]) if row else None

    def _borrow(self) -> psycopg.Connection[tuple[Any, ...]] | None:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._closed or time.monotonic() < self._retry_at:
                return None
        try:
            # A short statement timeout: the read is by primary key and never waits on row locks, so only
            # something like an operator's ALTER TABLE could hold it up, and the event loop must not wait.
            return psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
        except psycopg.Error as exc:
            log.warning("cannot connect to read the auth epoch (sign-ins are checked in the store): %s", exc)
            with self._lock:
                self._retry_at = time.monotonic() + self.RETRY_AFTER
            return None

    def _give_back(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.KEEP_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def open_epoch(url: str, table: str = "auth_epoch") -> AuthEpoch:
    """The counter of ``table`` (``auth_epoch``, or ``routes_epoch`` for proxy/routes.py)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return PostgresEpoch(url, table)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return SqliteEpoch(parsed.database, table)
    return NoEpoch()
