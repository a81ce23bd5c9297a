"""Whether the database answers: which errors mean "it is away", and one log line when it goes and one when
it is back, however many requests and background loops meet the outage meanwhile."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from openworkbench.errors import StoreUnavailable

log = logging.getLogger("openworkbench.store")

MESSAGE = "the store is unavailable (the database cannot be reached); try again shortly"
# SQLSTATE classes that say the server, not the statement, failed: 08 connection exception, 53 insufficient
# resources (too many connections), 57P admin shutdown / crash shutdown / cannot connect now / database dropped.
_AWAY_STATES = ("08", "53", "57P")
RETRY_S = 1.0
# A relapse this soon after the database came back (a server still starting up refuses some connections) is
# the same outage: it gets 503s like any, but no second pair of log lines.
RELAPSE_S = 10.0
T = TypeVar("T")


def is_unavailable(exc: SQLAlchemyError) -> bool:
    """The error is the database being out of reach, not something this statement did."""
    if isinstance(exc, DisconnectionError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:  # SQLAlchemy's own judgement: the connection is dead
        return True
    orig = exc.orig
    if not isinstance(orig, psycopg.OperationalError):
        return False
    # No SQLSTATE: libpq's own failure (connection refused, server closed the connection unexpectedly).
    return orig.sqlstate is None or orig.sqlstate.startswith(_AWAY_STATES)


class Availability:
    """The database's state as the last transaction found it. Thread-safe; the check on success is one
    attribute read, since every transaction makes it."""

    def __init__(self, name: str) -> None:
        self.name = name  # the URL without its password, for the log
        self._down_since: float | None = None
        self._back_at = -RELAPSE_S
        self._relapse = False  # down again right after coming back: not logged again
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self._relapse = self._down_since - self._back_at < RELAPSE_S
            if self._relapse:
                return
        log.error("the database %s is unavailable: %s; requests that need it get 503 until it is back "
                  "(this is logged once per outage)", self.name, _first_line(exc))

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
            self._back_at = time.monotonic()
            relapse, self._relapse = self._relapse, False
        if since is not None and not relapse:
            log.warning("the database %s is back after %.1f s unavailable", self.name, time.monotonic() - since)


async def once_available(work: Callable[[], Awaitable[T]]) -> T:
    """``work()`` retried every RETRY_S s while the database is away: for what must be recorded (a session's
    failure) and has nobody to answer 503 to."""
    while True:
        try:
            return await work()
        except StoreUnavailable:
            await asyncio.sleep(RETRY_S)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}"
