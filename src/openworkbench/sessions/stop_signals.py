"""Stop requests as a session's start sees them: a flag its steps check, and an event its waits give way to."""

from __future__ import annotations

import asyncio


class StopRequested(Exception):
    """A stop arrived while the session was starting: the start gives way (control flow, never a client's)."""


class StopSignals:
    """Per session: ``request`` marks a stop; a start ``check``s between steps (raising ``StopRequested``) and
    waits on ``signal`` next to its job's events; the stop, once the start has given way, calls ``given_way``."""

    def __init__(self) -> None:
        self._stopping: set[str] = set()
        self._signals: dict[str, asyncio.Event] = {}

    def request(self, session_id: str) -> None:
        self._stopping.add(session_id)
        self.signal(session_id).set()

    def given_way(self, session_id: str) -> None:
        self._stopping.discard(session_id)
        self._signals.pop(session_id, None)

    def signal(self, session_id: str) -> asyncio.Event:
        return self._signals.setdefault(session_id, asyncio.Event())

    def drop(self, session_id: str) -> None:
        """A wait is over: its signal goes, unless a stop set it (``given_way`` drops that one)."""
        if (signal := self._signals.get(session_id)) is not None and not signal.is_set():
            del self._signals[session_id]

    def check(self, session_id: str) -> None:
        if session_id in self._stopping:
            raise StopRequested
