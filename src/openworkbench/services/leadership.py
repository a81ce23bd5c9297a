"""Leadership among replicas: which `workbench serve` process does what only one may do.

Any number of servers share one PostgreSQL. Each role (``monitor:<cluster>``: poll that cluster's jobs;
``sessions``: watch sessions and take over starts and stops of dead replicas) has one leader at a time: the
process holding a PostgreSQL session-level advisory lock on a key derived from the role's name, each on a
dedicated connection of its own (never the pool's: a pooled connection goes back to the pool with its lock).

A thread tries the locks it does not hold every ``database.leader_check_interval_s`` s. A holder killed with
SIGKILL loses its connection; PostgreSQL frees its locks, and another replica takes them at its next try. A holder
whose connection fails (the network, a PostgreSQL restart) stops leading at once: ``leads(role)`` is False from
the first failed check, and the callers confirm (``confirm``: one round trip on the lock's own connection) before
each round of leader's work. Every replica also holds ``replica:<id>`` for its life: others learn it is alive by
failing to take it (``alive``).

SQLite: one server (cli serve's flock refuses a second), leader of every role.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.engine import make_url

from openworkbench import metrics
from openworkbench.store import Store

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 2
# A confirmation this recent stands without a round trip: a monitor's round comes every 100 ms, and a round trip
# each time was ten queries a second per cluster on an idle server (the pages' "no store read" tests saw them).
# A lock lost with its connection is so noticed within this much more; a duplicate poll meanwhile is harmless.
CONFIRM_FRESH_S = 1.0
LEADER = Gauge("openworkbench_leader", "1 while this server leads the role (PostgreSQL advisory lock held)",
               ["role"], registry=metrics.REGISTRY)
Listener = Callable[[str, bool], None]


def new_replica_id() -> str:
    """This process's name among replicas: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


def lock_key(role: str) -> int:
    """The advisory lock key of a role: the first 8 bytes of BLAKE2b("openworkbench:" + role), signed."""
    digest = hashlib.blake2b(f"openworkbench:{role}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def replica_role(replica_id: str) -> str:
    return f"replica:{replica_id}"


class _Held:
    """One role's lock, on its own connection; touched by the leadership thread and by ``confirm``."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.key = lock_key(role)
        self.conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.lock = threading.Lock()
        self.elsewhere = False  # the last try reached PostgreSQL and found the lock held by another replica
        self.confirmed = -math.inf  # time.monotonic() of the last round trip that found the connection alive


class Leadership:
    """The roles this process leads; ``listen`` is told of every change (from the leadership thread)."""

    def __init__(self, url: str, replica_id: str, roles: Iterable[str], interval: float) -> None:
        parsed = make_url(url)
        self.replica_id = replica_id
        self.single = parsed.get_backend_name() != "postgresql"  # SQLite: the only server leads everything
        self._conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self.interval = interval
        self._held = {role: _Held(role) for role in [replica_role(replica_id), *roles]}
        self._leading: set[str] = set()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    @property
    def roles(self) -> list[str]:
        return [role for role in self._held if not role.startswith("replica:")]

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        """Take what can be taken now (so a lone server leads from its first request), then keep trying."""
        self.try_all()
        if not self.single:
            self._thread.start()

    def leads(self, role: str) -> bool:
        return self.single or role in self._leading

    def elsewhere(self, role: str) -> bool:
        """Does another replica hold the role? (Its lock was found taken at the last try; False while PostgreSQL
        cannot be reached: nobody is known to lead then.)"""
        return not self.single and self._held[role].elsewhere

    def confirm(self, role: str) -> bool:
        """Still the leader? Checked on the lock's own connection (one round trip, at most every
        ``CONFIRM_FRESH_S``): a lost connection is a lost lock, and the role is given up at once."""
        if self.single:
            return True
        held = self._held[role]
        with held.lock:
            if role not in self._leading or held.conn is None:
                return False
            if time.monotonic() - held.confirmed < CONFIRM_FRESH_S:
                return True
            try:
                held.conn.execute("SELECT 1")
                held.confirmed = time.monotonic()
                return True
            except psycopg.Error as exc:
                self._lost(held, exc)
                return False

    def try_all(self) -> None:
        for held in self._held.values():
            if self.single:
                self._set(held.role, True)
            elif held.role in self._leading:
                self.confirm(held.role)
            else:
                self._try(held)

    def _try(self, held: _Held) -> None:
        with held.lock:
            try:
                if held.conn is None or held.conn.closed:
                    held.conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                                application_name=f"openworkbench {self.replica_id}")
                row = held.conn.execute("SELECT pg_try_advisory_lock(%s)", (held.key,)).fetchone()
            except psycopg.Error as exc:
                log.warning("leadership: cannot try the lock of %s: %s", held.role, str(exc).strip())
                self._close(held)
                return
            held.elsewhere = not (row and row[0])
            if held.elsewhere:
                return
        self._set(held.role, True)

    def _lost(self, held: _Held, exc: Exception) -> None:
        log.warning("leadership: lost %s (its connection failed: %s)", held.role, str(exc).strip())
        self._close(held)
        self._set(held.role, False)

    @staticmethod
    def _close(held: _Held) -> None:
        if held.conn is not None:
            try:
                held.conn.close()
            except psycopg.Error:
                pass
            held.conn = None

    def _set(self, role: str, leading: bool) -> None:
        if (role in self._leading) == leading:
            return
        (self._leading.add if leading else self._leading.discard)(role)
        if role.startswith("replica:"):
            return
        LEADER.labels(role).set(1 if leading else 0)
        log.info("replica %s %s %s", self.replica_id, "now leads" if leading else "no longer leads", role)
        for listener in self._listeners:
            try:
                listener(role, leading)
            except Exception:  # one listener's failure must not keep the others uninformed
                log.exception("leadership listener failed for %s", role)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.try_all()
            except Exception:  # the thread must go on: a replica without it would never lead
                log.exception("leadership round failed")

    def stop(self) -> None:
        """Give up every role (closing the connections frees the locks at once)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for held in self._held.values():
            with held.lock:
                self._close(held)
            self._set(held.role, False)


class Liveness:
    """Is the replica that recorded itself on a row still alive? Its ``replica:<id>`` lock is held. Asked on a
    pooled connection in one statement that takes the lock and, if it got it, frees it again at once."""

    def __init__(self, store: Store, replica_id: str) -> None:
        self.store = store
        self.replica_id = replica_id

    def alive(self, replica_id: str | None) -> bool:
        if replica_id == self.replica_id:
            return True
        if self.store.is_sqlite or not replica_id:
            return False  # SQLite: any other replica id is an earlier process of this one server
        with self.store.transaction() as conn:
            free = conn.execute(TRY_FREE, {"key": lock_key(replica_role(replica_id))}).scalar()
        return not free


# True when nobody held the lock (taken, then freed at once); CASE evaluates its branches in order.
TRY_FREE = text("SELECT CASE WHEN pg_try_advisory_lock(:key) THEN pg_advisory_unlock(:key) ELSE false END")
