"""A change feed of each user's sessions, in memory: what the homepage's long-poll waits on (web/live.py).

It is fed by ``SessionViews.written`` (the store's commit hook, in the committing thread), after the views
dropped what the commit replaced, so a woken waiter reads the new state; on a server with replicas, the relay
of the other replicas' commits reaches the same hook. Each write bumps its owner's version and wakes that
user's waiters on their own event loop; nothing here reads the store.

A version is ``<instance>.<n>``, ``instance`` random per process: a version from another server, or from an
earlier run of this one, never equals a current one, so its holder is answered at once rather than left to wait
on a state it never saw. Waiters are bounded per user and in all (``server.live_max_waiters*``): past either,
``wait`` returns at once and the client falls back to asking now and then.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from openworkbench.store.schema import Session


@dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # its loop is closed: the waiter went with it
            pass


class SessionFeed:
    """Per-user versions bumped by commits, and the long-polls waiting for them to move."""

    def __init__(self, max_waiters: int = 500, max_per_user: int = 4) -> None:
        self.max_waiters = max_waiters
        self.max_per_user = max_per_user
        self._instance = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._seq = 0
        self._floor = 0  # a write of sessions not known one by one (a bulk UPDATE): every user's version moved
        self._versions: dict[int, int] = {}  # user id -> seq of the last write of one of their sessions
        self._waiters: dict[int, set[_Waiter]] = {}
        self._count = 0

    def version(self, user_id: int) -> str:
        """Read it before reading the sessions it stands for: a write in between then only causes one more
        answer (the version moved), never a missed one."""
        return f"{self._instance}.{max(self._versions.get(user_id, 0), self._floor)}"

    def waiting(self) -> int:
        return self._count

    def written(self, sessions: Iterable[Any]) -> None:
        """The views' hook, from any thread: ``Session`` rows a commit wrote, or the class for a bulk write."""
        with self._lock:
            self._seq += 1
            rows = list(sessions)
            if all(isinstance(row, Session) and row.user_id is not None for row in rows):
                users = {row.user_id for row in rows}
                self._versions.update((user, self._seq) for user in users)
                woken = [waiter for user in users for waiter in self._waiters.get(user, ())]
            else:
                self._floor, self._versions = self._seq, {}
                woken = [waiter for waiters in self._waiters.values() for waiter in waiters]
        for waiter in woken:
            waiter.wake()

    async def wait(self, user_id: int, known: str, timeout: float) -> bool:
        """Until the user's version is no longer ``known``, or ``timeout`` s. At once when it already differs;
        False at once when the bounds on waiters are reached (the caller answers now, as a poll would)."""
        waiter = _Waiter(asyncio.get_running_loop())
        with self._lock:  # checked under the lock: a write cannot slip between the check and the registration
            if self.version(user_id) != known:
                return True
            mine = self._waiters.setdefault(user_id, set())
            if self._count >= self.max_waiters or len(mine) >= self.max_per_user:
                if not mine:
                    del self._waiters[user_id]
                return False
            mine.add(waiter)
            self._count += 1
        try:
            async with asyncio.timeout(timeout):
                await waiter.event.wait()
        except TimeoutError:
            pass
        finally:  # also when the request is cancelled (its client went away): nothing stays behind
            self._forget(user_id, waiter)
        return True

    def _forget(self, user_id: int, waiter: _Waiter) -> None:
        with self._lock:
            mine = self._waiters.get(user_id)
            if mine is not None and waiter in mine:
                mine.discard(waiter)
                self._count -= 1
                if not mine:
                    del self._waiters[user_id]
