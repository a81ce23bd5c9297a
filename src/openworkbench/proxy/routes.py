"""The routes of ``/s/<part>/``: kept in the store, so every server process on it routes alike; cached per process.

A route says which session a URL part is, whose it is, what state it is in, and where its IDE listens (an
``Upstream``). The process that drives a session writes its route; any process answers the proxy with it.

A cached route is used only while the routes epoch (a counter that triggers bump on every change to the
``routes`` table, migration 0009) is the value read *before* the route was loaded, so a route written or
removed by any process is seen by the very next request of every other one. Reading the epoch is all a cache
hit asks of the database (SQLite: ``PRAGMA data_version``; PostgreSQL: one prepared single-row SELECT), as for
the sign-in cache (auth/cache.py, store/epoch.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session as DbSession

from openworkbench.errors import InvalidState, NotFound
from openworkbench.proxy.target import ProxyTarget
from openworkbench.proxy.upstream import Upstream
from openworkbench.store import Store
from openworkbench.store.epochs import Counter
from openworkbench.store.schema import RouteRecord

PREFIX = "/s/"
MAX_ENTRIES = 10_000  # a flood of distinct URL parts only costs a refill
ROUTED_STATE = "running"  # the one state in which the proxy forwards


def part_of(url: str) -> str:
    """``/s/<part>/`` -> ``<part>``."""
    if not (url.startswith(PREFIX) and url.endswith("/")):
        raise ValueError(f"not a session URL: {url!r}")
    return url[len(PREFIX):-1]


@dataclass(frozen=True)
class Route:
    session_id: str
    owner: str  # the user name that alone may pass
    state: str
    target: ProxyTarget  # where to forward (its upstream is ``Upstream.NOWHERE`` while not known)

    @property
    def part(self) -> str:
        return part_of(self.target.prefix)

    def checked(self, username: str) -> tuple[str, ProxyTarget]:
        """(session id, target) for the owner of a running session; else the refusal to answer."""
        if self.owner != username:  # the answer of a URL no session has: existence is not told
            raise NotFound(f"no session at {self.target.prefix}")
        if self.state != ROUTED_STATE:
            raise InvalidState(f"the session is {self.state}")
        return self.session_id, self.target


@dataclass(frozen=True)
class _Entry:
    route: Route
    epoch: int


class RouteTable:
    """``add`` / ``remove`` / ``get`` of routes in the store, with a per-process cache checked by the epoch."""

    def __init__(self, store: Store, epoch: Counter) -> None:
        self.store = store
        self.epoch = epoch
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    # -- writing ---------------------------------------------------------------------------------
    def add(self, route: Route, db: DbSession | None = None) -> None:
        """Write ``route`` (in ``db``'s transaction if given); nothing is written when the store has it already,
        so an unchanged route does not make every process drop its cached routes."""
        if db is None:
            with self.store.session() as own:
                self._write(own, route)
        else:
            self._write(db, route)

    def _write(self, db: DbSession, route: Route) -> None:
        self._forget(route.part)
        values = _values(route)
        record = db.get(RouteRecord, route.part)
        if record is None:
            db.add(RouteRecord(part=route.part, **values))
            return
        for key, value in values.items():
            if getattr(record, key) != value:
                setattr(record, key, value)

    def remove(self, part: str) -> None:
        """The route is gone for every process at once: the next request to ``part`` is refused (404)."""
        self._forget(part)
        with self.store.session() as db:
            db.execute(delete(RouteRecord).where(RouteRecord.part == part))

    # -- reading ---------------------------------------------------------------------------------
    def cached(self, part: str, since: float | None = None) -> Route | None:
        """The route from memory, if still current (one epoch read; safe on the event loop); None: ask ``get``.

        ``since``: when the request came in (``time.perf_counter()``); an epoch read that began since then (the
        sign-in check's, store/epochs.py) is current enough for it, and saves a round trip."""
        entry = self._entries.get(part)
        if entry is None:
            return None
        epoch = self.epoch.current() if since is None else self.epoch.current_since(since)
        if epoch != entry.epoch:
            self._forget(part)
            return None
        return entry.route

    def get(self, part: str) -> Route | None:
        """The route of ``part``, None if there is none. Blocking (the store): run it in a thread."""
        found = self.cached(part)
        if found is not None:
            return found
        if not part.isprintable():  # URL parts are hex; a NUL would reach the store (PostgreSQL refuses it)
            return None
        epoch = self.epoch.current()  # before the read: a write committed during it is not missed
        with self.store.session() as db:
            record = db.get(RouteRecord, part)
            route = None if record is None else _route(record)
        if route is not None and epoch is not None:
            with self._lock:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[part] = _Entry(route, epoch)
        return route

    # -- the proxy's questions ---------------------------------------------------------------------
    def target(self, part: str, username: str) -> tuple[str, ProxyTarget]:
        """Where the proxy sends traffic for ``/s/<part>/``; only the owner of a running session passes.
        Blocking: run it in a thread."""
        route = self.get(part)
        if route is None:
            raise NotFound(f"no session at {PREFIX}{part}/")
        return route.checked(username)

    def known_target(self, part: str, username: str, since: float | None = None) -> tuple[str, ProxyTarget] | None:
        """``target`` from memory and one epoch read (safe on the event loop); None when the store must be read."""
        route = self.cached(part, since)
        return None if route is None else route.checked(username)

    def _forget(self, part: str) -> None:
        with self._lock:
            self._entries.pop(part, None)

    def close(self) -> None:
        self.epoch.close()


def _values(route: Route) -> dict[str, object]:
    upstream = route.target.upstream
    return {"session_id": route.session_id, "owner": route.owner, "state": route.state,
            "upstream": str(upstream), "upstream_uid": upstream.uid if upstream.is_unix else -1,
            "strip_prefix": route.target.strip_prefix, "headers": dict(route.target.headers)}


def _route(record: RouteRecord) -> Route:
    upstream = Upstream.parse(record.upstream or "", record.upstream_uid)
    target = ProxyTarget(upstream, f"{PREFIX}{record.part}/", record.strip_prefix, dict(record.headers),
                         record.session_id)
    return Route(record.session_id, record.owner, record.state, target)
