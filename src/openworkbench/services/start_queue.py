"""Launch storms wait their turn: a FIFO queue in front of session starts, never a refusal.

At most ``sessions.max_concurrent_starts`` sessions are in their start phase at once (from leaving the queue
until their IDE answers or the start fails). The others wait, first come first served, in the state the
product shows before a start (``launching``, or ``resuming``) with ``status_detail`` "Queued to start: N ahead".

The place is written to the store (one transaction for every queued session whose place moved, at most one
per ``DEBOUNCE``), not computed at read time: each commit of a session drops its cached JSON (sessions/views.py),
so every reader (get_session with or without ``timestamp`` deltas, the web pages) sees the place with nothing
added to the read path, and a restarted server finds its queued sessions by that text (``was_queued``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from prometheus_client import Gauge
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from openworkbench import metrics
from openworkbench.sessions.states import SessionState
from openworkbench.store import Store
from openworkbench.store.schema import Session

if TYPE_CHECKING:
    from openworkbench.sessions.runner import SessionRunner

log = logging.getLogger(__name__)
QUEUED = "Queued to start: "
DEBOUNCE = 0.1  # s: a burst of moves (a storm's launches, several starts ending) becomes one write
STOPPED_QUEUED = "stopped while queued to start"

STARTING = Gauge("openworkbench_session_starts", "Sessions in their start phase now (holding a start slot)",
                 registry=metrics.REGISTRY)
WAITING = Gauge("openworkbench_session_start_queue", "Sessions waiting in the start queue now",
                registry=metrics.REGISTRY)


def queued_detail(ahead: int) -> str:
    return f"{QUEUED}{ahead} ahead"


def was_queued(status_detail: str) -> bool:
    """Does a stored session's text say it waited in the queue (and so had not begun to start)?"""
    return status_detail.startswith(QUEUED)


class StartLine:
    """The queue's pure core: who holds a start slot, who waits, in which order."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.starting: set[str] = set()
        self.waiting: dict[str, None] = {}  # insertion-ordered: the FIFO
        self.most_starting = 0  # the most slots held at once, since the server started

    def join(self, session_id: str, adopted: bool = False) -> bool:
        """True: the session holds a slot now; False: it waits at the end of the line. ``adopted``: a start a
        previous server process began (its IDE already runs) takes a slot at once, even beyond the bound."""
        if adopted or (not self.waiting and len(self.starting) < self.slots):
            self.starting.add(session_id)
            self.most_starting = max(self.most_starting, len(self.starting))
            return True
        self.waiting[session_id] = None
        return False

    def leave(self, session_id: str) -> list[str]:
        """The session's start ended, or its wait: the sessions that get a slot now, first come first."""
        self.starting.discard(session_id)
        self.waiting.pop(session_id, None)
        granted = []
        while self.waiting and len(self.starting) < self.slots:
            first = next(iter(self.waiting))
            del self.waiting[first]
            self.starting.add(first)
            granted.append(first)
        self.most_starting = max(self.most_starting, len(self.starting))
        return granted

    def withdraw(self, session_id: str) -> bool:
        """Take a waiting session out of the line; False if it is not waiting (starting, or unknown)."""
        return self.waiting.pop(session_id, 0) is None

    def places(self) -> dict[str, int]:
        """Each waiting session's count of sessions ahead of it."""
        return {session_id: ahead for ahead, session_id in enumerate(self.waiting)}


def write_details(store: Store, details: dict[str, str]) -> None:
    """One transaction: these sessions' status_detail (ORM writes, so the commit drops their cached JSON)."""
    with store.session() as db:
        for row in db.scalars(select(Session).where(Session.id.in_(list(details)))):
            row.status_detail = details[row.id]


class StartQueue:
    """``StartLine`` in the event loop: waiters woken in order, and places written to the store."""

    def __init__(self, slots: int, store: Store) -> None:
        self.line = StartLine(slots)
        self.store = store
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._shown: dict[str, str] = {}  # the text last written for a session that waits (or waited)
        self._moved = asyncio.Event()
        # Held by every store write of a queued session's text or end: a place written late can never
        # overwrite what its start or stop wrote after it.
        self._writing = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def turn(self, session_id: str, adopted: bool = False) -> AsyncIterator[None]:
        """Hold a start slot for the body, after waiting for one. A stop while it waits (``withdraw``)
        ends the wait with CancelledError, which the runner takes as "nothing to do"."""
        if not self.line.join(session_id, adopted):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[session_id] = waiter
            self._note_move()
            try:
                await waiter
            except asyncio.CancelledError:
                self._release(session_id)
                raise
            await self._clear(session_id)
        self._count()
        try:
            yield
        finally:
            self._release(session_id)

    def pass_on(self, session_id: str) -> None:
        """A start whose job waits in a scheduler's queue gives its slot to the next: it may wait hours there,
        and costs this server nothing meanwhile. It does not take a slot again when its job runs."""
        if session_id in self.line.starting:
            self._release(session_id)

    def withdraw(self, session_id: str) -> bool:
        """Take a waiting session out of the queue at once (a stop); False if it is not waiting."""
        if not self.line.withdraw(session_id):
            return False
        waiter = self._waiters.pop(session_id, None)
        if waiter is not None:
            waiter.cancel()
        self._note_move()
        return True

    async def end_withdrawn(self, runner: SessionRunner, session_id: str, force: bool, suspend: bool) -> None:
        """A session stopped while it waited: nothing of it ran. A new one ends ``canceled`` (as a job still
        pending does); one that waited to resume is suspended again, and a plain stop then discards it."""
        async with self._writing:
            self._shown.pop(session_id, None)
            row, _, _ = await runner.load(session_id)
            if row.state != SessionState.RESUMING:
                await runner.transition(session_id, SessionState.CANCELED, STOPPED_QUEUED, status_detail=STOPPED_QUEUED)
                return
            await runner.transition(session_id, SessionState.SUSPENDED, "stopped while queued to resume",
                                    status_detail="")
        if not suspend:
            await runner.stop(session_id, force, suspend=False)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    def _release(self, session_id: str) -> None:
        self._waiters.pop(session_id, None)
        for granted in self.line.leave(session_id):
            waiter = self._waiters.pop(granted, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._note_move()

    def _count(self) -> None:
        STARTING.set(len(self.line.starting))
        WAITING.set(len(self.line.waiting))

    def _note_move(self) -> None:
        self._count()
        self._moved.set()
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_places())

    async def _clear(self, session_id: str) -> None:
        """Its turn came: its place goes from status_detail (once any write of it in flight has landed)."""
        async with self._writing:
            if self._shown.pop(session_id, None) is not None:
                await run_in_threadpool(write_details, self.store, {session_id: ""})

    async def _write_places(self) -> None:
        while True:
            await self._moved.wait()
            await asyncio.sleep(DEBOUNCE)
            self._moved.clear()
            async with self._writing:
                places = {session_id: queued_detail(ahead) for session_id, ahead in self.line.places().items()}
                moved = {session_id: text for session_id, text in places.items() if self._shown.get(session_id)
                         != text}
                if not moved:
                    continue
                try:
                    await run_in_threadpool(write_details, self.store, moved)
                except Exception:  # the store failing: the places are written again on the next move or retry
                    log.exception("writing %d start queue places failed", len(moved))
                    self._moved.set()
                    await asyncio.sleep(1)
                    continue
                self._shown.update(moved)
