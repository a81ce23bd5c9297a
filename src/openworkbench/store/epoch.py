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


def _query(tables: tuple[str, ...]) -> str:
    """One single-row SELECT of every counter: reading two costs one round trip, not two."""
    return "SELECT " + ", ".join(f"(SELECT value FROM {table} WHERE id = 1)" for table in tables)


class NoEpoch:
    """For a database no second connection can watch (SQLite in memory): nothing is ever cached."""

    def current(self) -> int | None:
        return None

    def read(self) -> tuple[int, ...] | None:
        return None

    def close(self) -> None:
        pass


class SqliteEpoch:
    """Reads the counter on a connection of its own; ``PRAGMA data_version`` (a few µs) tells it whether
    any other connection has committed since, so the counter itself is read only after a commit."""

    def __init__(self, path: str, tables: tuple[str, ...] = ("auth_epoch",)) -> None:
        self._query = _query(tables)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._data_version: int | None = None
        self._value: tuple[int, ...] | None = None

    def current(self) -> int | None:
        values = self.read()
        return None if values is None else values[0]

    def read(self) -> tuple[int, ...] | None:
        """Every counter, in the order of ``tables``; None when they cannot be read."""
        with self._lock:
            try:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._data_version:
                    row = self._conn.execute(self._query).fetchone()
                    self._data_version, self._value = version, _values(row)
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

    def __init__(self, url: str, tables: tuple[str, ...] = ("auth_epoch",)) -> None:
        self.QUERY = _query(tables)
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._idle: list[psycopg.Connection[tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._retry_at = 0.0  # time.monotonic() before which no connect is tried
        self._closed = False
        self._failing = False  # the last check failed: its failures are not logged again until one succeeds

    def current(self) -> int | None:
        values = self.read()
        return None if values is None else values[0]

    def read(self) -> tuple[int, ...] | None:
        """Every counter, in the order of ``tables``; None when they cannot be read."""
        conn = self._borrow()
        if conn is None:
            return None
        try:
            row = conn.execute(self.QUERY, prepare=True).fetchone()
        except psycopg.Error as exc:
            self._failed("cannot read the epochs (cached sign-ins and routes are checked in the store)", exc)
            conn.close()
            return None
        self._failing = False
        self._give_back(conn)
        return _values(row)

    def _failed(self, what: str, exc: psycopg.Error) -> None:
        """Log the first failure of a run of them: a database that is away fails every check for as long."""
        if not self._failing:
            self._failing = True
            text = str(exc).strip().splitlines()
            log.warning("%s: %s (logged once until a check succeeds again)", what, text[0] if text else type(exc))

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
            self._failed("cannot connect to read the auth epoch (sign-ins are checked in the store)", exc)
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


def _values(row: Any) -> tuple[int, ...] | None:
    if row is None or any(value is None for value in row):
        return None
    return tuple(int(value) for value in row)


def open_epoch(url: str, tables: tuple[str, ...] = ("auth_epoch",)) -> SqliteEpoch | PostgresEpoch | NoEpoch:
    """The counters of ``tables`` (``current()``: the first), read together (store/epochs.py shares them)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return PostgresEpoch(url, tables)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return SqliteEpoch(parsed.database, tables)
    return NoEpoch()
