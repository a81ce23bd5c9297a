"""The auth epoch: a number that changes whenever anyone's access changes (migration 0004's triggers).

Caches of sign-ins compare it on every hit, so a revoked token or a disabled user is refused by the
very next request, whichever process made the change. ``current()`` never blocks on the network and
is cheap enough for the event loop; it answers None when it cannot tell, and caches then ask the store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Protocol

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "openworkbench_auth"  # the NOTIFY channel of migration 0004's PostgreSQL trigger


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

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._data_version: int | None = None
        self._value: int | None = None

    def current(self) -> int | None:
        with self._lock:
            try:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._data_version:
                    row = self._conn.execute("SELECT value FROM auth_epoch WHERE id = 1").fetchone()
                    self._data_version, self._value = version, (row[0] if row else None)
                return self._value
            except sqlite3.Error as exc:
                log.warning("cannot read the auth epoch: %s", exc)
                self._data_version = None
                return None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresEpoch:
    """LISTENs on its own connection in a thread; every NOTIFY moves the number on. While the listener is
    not connected the answer is None, and a (re)connect moves it on too: what happened meanwhile is unknown."""

    def __init__(self, url: str) -> None:
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._value: int | None = None
        self._counter = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="auth-epoch-listener", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5)  # cached sign-ins start working once the listener is up

    def current(self) -> int | None:
        return self._value

    def _bump(self, connected: bool) -> None:
        with self._lock:
            self._counter += 1
            self._value = self._counter if connected else None

    def _run(self) -> None:
        import psycopg  # only servers on PostgreSQL need the driver

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._bump(connected=True)
                    self._ready.set()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._bump(connected=True)
            except psycopg.Error as exc:
                self._bump(connected=False)
                log.warning("auth epoch listener lost its connection (sign-ins are checked in the store): %s", exc)
                self._ready.set()
                self._stop.wait(1.0)
        self._bump(connected=False)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)


def open_epoch(url: str) -> AuthEpoch:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return PostgresEpoch(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return SqliteEpoch(parsed.database)
    return NoEpoch()
