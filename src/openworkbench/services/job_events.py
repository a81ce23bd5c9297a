"""Job events: what the job service committed, as typed changes, for waiters and subscribers.

Writers (a cluster's monitor thread, a launch or a stop in a worker thread, any thread) ``publish`` after
their commit. A subscription belongs to the event loop it was made on and gets, there, each change published
after it was made, once, in publishing order (the job service publishes under its lock, so one job's changes
arrive in commit order). It holds at most ``limit`` changes not yet read: on one more it has overflowed, its
queue is emptied and its next read raises ``EventsLost`` once, then it goes on. A slow subscriber so costs
bounded memory and learns that it must read the store again, rather than miss a job's end in silence
(``FollowedJob`` does that read itself).

Subscribe first, then read the store: a change committed between the two is then in the read or in the
queue (or both: a duplicate, harmless for "has it reached X"), never lost. The hub is in-process; a server
with replicas feeds it the other replicas' commits too (issue 15, point 5) through the same ``publish``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from starlette.concurrency import run_in_threadpool

from openworkbench.clusters.base import FINAL_STATUSES
from openworkbench.errors import EventsLost, JobWaitTimeout, WaitInterrupted

QUEUE_LIMIT = 1000  # changes one subscription holds unread; a job makes a handful, a watcher of all many


@dataclass(frozen=True)
class JobChange:
    """A job's stored state right after a commit changed it."""

    job_id: str
    owner: str
    cluster: str
    session_id: str | None
    status: str
    status_message: str
    exit_code: int | None
    host: str
    time: datetime  # the row's last_update_time

    @classmethod
    def of_json(cls, job: dict[str, Any]) -> JobChange:
        """The change a job's API JSON describes (read by the caller after subscribing)."""
        return cls(job["id"], job["user"], job["cluster"], job.get("sessionId"), job["status"],
                   job["statusMessage"], job["exitCode"], job.get("host") or "",
                   datetime.fromisoformat(job["lastUpdateTime"]))

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def summary(self) -> dict[str, Any]:
        """The fields of the API's job JSON a change carries, named as there (for ``outcome`` and its kin)."""
        return {"id": self.job_id, "user": self.owner, "cluster": self.cluster, "sessionId": self.session_id,
                "status": self.status, "statusMessage": self.status_message, "exitCode": self.exit_code,
                "host": self.host}


Match = Callable[[JobChange], bool]


class Subscription:
    """Changes as they are published, on the loop it was made on; a context manager that unsubscribes."""

    def __init__(self, hub: JobEvents, job_id: str | None, match: Match | None, limit: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.job_id = job_id
        self.limit = limit
        self.high_water = 0  # the most changes it ever held unread (docs and tests: the bound holds)
        self._hub = hub
        self._match = match
        self._queue: deque[JobChange] = deque()
        self._ready = asyncio.Event()
        self._overflowed = False
        self.closed = False

    def put(self, change: JobChange) -> None:
        """On the subscription's loop: queue the change if it matches, or overflow."""
        if self.closed or (self._match is not None and not self._match(change)):
            return
        if len(self._queue) >= self.limit:
            self._overflowed = True
            self._queue.clear()
        else:
            self._queue.append(change)
            self.high_water = max(self.high_water, len(self._queue))
        self._ready.set()

    def lose(self) -> None:
        """On the subscription's loop: changes may have been missed (another replica's, while the relay was
        away); the next read raises ``EventsLost``, so the reader reads the store again."""
        if not self.closed:
            self._overflowed = True
            self._queue.clear()
            self._ready.set()

    def drain(self) -> list[JobChange]:
        """The changes queued now, without waiting; ``EventsLost`` (once) after an overflow."""
        if self._overflowed:
            self._overflowed = False
            self._queue.clear()
            raise EventsLost(f"a job event subscriber fell more than {self.limit} changes behind")
        changes = list(self._queue)
        self._queue.clear()
        self._ready.clear()
        return changes

    async def next(self, timeout: float | None = None, interrupt: asyncio.Event | None = None) -> JobChange:
        """The next change: ``TimeoutError`` after ``timeout`` s, ``WaitInterrupted`` once ``interrupt`` is
        set, ``EventsLost`` (once) after an overflow."""
        async with asyncio.timeout(timeout):
            while True:
                if self._overflowed:
                    self.drain()
                if self._queue:
                    return self._queue.popleft()
                if interrupt is not None and interrupt.is_set():
                    raise WaitInterrupted("the wait was interrupted")
                self._ready.clear()
                await _first(self._ready, interrupt)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> JobChange:
        return await self.next()

    def close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


async def _first(ready: asyncio.Event, interrupt: asyncio.Event | None) -> None:
    """Until ``ready`` or ``interrupt`` is set."""
    if interrupt is None:
        await ready.wait()
        return
    waits = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(interrupt.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class JobEvents:
    """The hub: ``publish`` from any thread; ``subscribe``, ``follow`` and ``wait`` on an event loop."""

    def __init__(self, read: Callable[[str], JobChange], limit: int = QUEUE_LIMIT) -> None:
        self._read = read  # a job's stored state (NotFound if none): blocking, run in a worker thread
        self.limit = limit
        self._lock = threading.Lock()
        self._by_job: dict[str, set[Subscription]] = {}
        self._others: set[Subscription] = set()

    def subscribe(self, job_id: str | None = None, match: Match | None = None,
                  limit: int | None = None) -> Subscription:
        """Changes of one job (``job_id``), or of all jobs that ``match`` (all of them without it)."""
        sub = Subscription(self, job_id, match, limit or self.limit)
        with self._lock:
            if job_id is not None:
                self._by_job.setdefault(job_id, set()).add(sub)
            else:
                self._others.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub.job_id is None:
                self._others.discard(sub)
            elif (subs := self._by_job.get(sub.job_id)) is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_job[sub.job_id]

    def subscribers(self) -> int:
        with self._lock:
            return len(self._others) + sum(len(subs) for subs in self._by_job.values())

    def publish(self, changes: Iterable[JobChange]) -> None:
        """Hand committed changes to their subscribers, each on its own loop; never blocks on a subscriber."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Subscription, JobChange]]] = {}
        with self._lock:  # held while scheduling too: deliveries keep the order of the publish calls
            if not self._by_job and not self._others:
                return
            for change in changes:
                for sub in (*self._by_job.get(change.job_id, ()), *self._others):
                    by_loop.setdefault(sub.loop, []).append((sub, change))
            for loop, items in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, items)
                except RuntimeError:  # that loop is closed: its subscribers are gone with it
                    pass

    def lost(self) -> None:
        """Every subscriber may have missed changes (the cross-replica relay reconnected): each is told by
        ``EventsLost`` on its next read, and reads the store again, as after an overflow."""
        with self._lock:
            subs = [*self._others, *(sub for subs in self._by_job.values() for sub in subs)]
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub.lose)
            except RuntimeError:  # that loop is closed: its subscribers are gone with it
                pass

    async def current(self, job_id: str) -> JobChange:
        """The job's stored state (one store read, in a worker thread); NotFound if there is no such job."""
        return await run_in_threadpool(self._read, job_id)

    def follow(self, job_id: str) -> FollowedJob:
        return FollowedJob(self, job_id)

    async def wait(self, job_id: str, states: Collection[str], timeout: float | None = None,
                   interrupt: asyncio.Event | None = None) -> JobChange:
        """The job's state once it is in ``states`` (at once if it is already); ``JobWaitTimeout`` after
        ``timeout`` s, ``WaitInterrupted`` once ``interrupt`` is set, ``NotFound`` for no such job."""
        with self.follow(job_id) as job:
            await job.start()
            return await job.until(states, timeout, interrupt)


def _deliver(items: list[tuple[Subscription, JobChange]]) -> None:
    for sub, change in items:
        sub.put(change)


class FollowedJob:
    """One job's newest state: subscribed at once, read from the store on ``start`` (or given), and kept up
    to date from the events; an overflow costs one more store read, never a missed change."""

    def __init__(self, hub: JobEvents, job_id: str) -> None:
        self.hub = hub
        self.job_id = job_id
        self.sub = hub.subscribe(job_id=job_id)
        self.state: JobChange | None = None

    async def start(self, known: JobChange | None = None) -> JobChange:
        """The state to start from: ``known`` if the caller read it after subscribing, else one store read."""
        self.state = known or await self.hub.current(self.job_id)
        return self.state

    async def refresh(self) -> JobChange:
        """The newest state, without waiting (the queue, in memory; the store after an overflow)."""
        try:
            changes = self.sub.drain()
        except EventsLost:
            return await self.start()
        return self._take(changes)

    async def change(self, timeout: float | None = None, interrupt: asyncio.Event | None = None) -> JobChange:
        """The state after the next change (``TimeoutError``, ``WaitInterrupted`` as ``Subscription.next``)."""
        try:
            first = await self.sub.next(timeout, interrupt)
        except EventsLost:
            return await self.start()
        return self._take([first, *self.sub.drain()])

    async def until(self, states: Collection[str], timeout: float | None = None,
                    interrupt: asyncio.Event | None = None) -> JobChange:
        state = self.state or await self.start()
        try:
            async with asyncio.timeout(timeout):
                while state.status not in states:
                    state = await self.change(interrupt=interrupt)
        except TimeoutError:
            raise JobWaitTimeout(f"job {self.job_id} did not reach {sorted(states)} within {timeout:g} s "
                                 f"(it is {state.status})", state) from None
        return state

    def _take(self, changes: list[JobChange]) -> JobChange:
        for change in changes:
            if self.state is None or not self.state.final:  # final is final: a late duplicate never undoes it
                self.state = change
        assert self.state is not None
        return self.state

    def close(self) -> None:
        self.sub.close()

    def __enter__(self) -> FollowedJob:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
