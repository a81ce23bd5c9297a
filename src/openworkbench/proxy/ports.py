"""Loopback ports for IDEs that cannot listen on a Unix socket (RStudio), allocated in the store.

A port is taken from ``sessions.port_range`` for one run of a session and written to its row with this host's
name; a unique index on (host, port) makes two launches racing for the same port (in one process or in two
servers on one database) end with one winner, and the loser picks again. Ports of sessions that have ended
are given back by ``release``, and any still held by a session no longer live are reclaimed on the next
allocation (a server that died mid-run cannot leak them).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from openworkbench.errors import NotAvailable
from openworkbench.store import Store
from openworkbench.store.schema import Session

ATTEMPTS = 20  # each lost race means another launch took a port: 20 in a row is a crowd, not bad luck


class _Taken(Exception):
    """Another launch committed the same port first."""


class PortAllocator:
    def __init__(self, store: Store, low: int, high: int, live_states: Iterable[str],
                 host: str | None = None) -> None:
        self.store = store
        self.low, self.high = low, high
        self.live_states = tuple(live_states)
        self.host = host or socket.gethostname()

    def allocate(self, session_id: str) -> int:
        """A port of the range that no live session on this host holds and nothing else listens on, now
        recorded as ``session_id``'s. Blocking (the store): run it in a thread."""
        for _ in range(ATTEMPTS):
            try:
                return self._try(session_id)
            except _Taken:
                continue
        raise NotAvailable(f"no free port in sessions.port_range {self.low}-{self.high} after {ATTEMPTS} attempts: "
                           "too many sessions are starting at once")

    def _try(self, session_id: str) -> int:
        with self.store.transaction() as conn:
            here = Session.port_host == self.host
            conn.execute(update(Session).where(here, Session.state.not_in(self.live_states))
                         .values(port=None, port_host=None))
            others = select(Session.port).where(here, Session.id != session_id, Session.port.is_not(None))
            held = {port for port in conn.scalars(others) if port is not None}
            port = self._pick(held)
            try:
                conn.execute(update(Session).where(Session.id == session_id).values(port=port, port_host=self.host))
            except IntegrityError:
                raise _Taken from None  # leaves the block: the transaction rolls back
        return port

    def _pick(self, held: set[int]) -> int:
        free = [port for port in range(self.low, self.high + 1) if port not in held]
        random.shuffle(free)  # concurrent launches rarely pick the same one
        for port in free:
            if _bindable(port):
                return port
        raise NotAvailable(f"no free port in sessions.port_range {self.low}-{self.high}: {len(held)} are held by "
                           "live sessions on this host and the others are in use")

    def release(self, session_id: str) -> None:
        """The session's run has ended: its port is free for another."""
        with self.store.transaction() as conn:
            conn.execute(update(Session).where(Session.id == session_id).values(port=None, port_host=None))


def _bindable(port: int) -> bool:
    """Nothing else (another program, an IDE of a session not recorded here) listens on the port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
