"""Sign-ins already checked against the store, kept until anyone's access changes.

A hit costs a dict look-up and one ``AuthEpoch.current()``; an entry is good only while the epoch is
the one seen *before* its store look-up began, so a revocation that commits during that look-up is
not missed. Entries also go stale after ``fresh_for`` seconds, so the store still records last use.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from openworkbench.auth.permissions import Principal
from openworkbench.store.epoch import AuthEpoch

MAX_ENTRIES = 10_000  # a flood of distinct valid credentials only costs a refill


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    epoch: int
    fresh_until: float  # time.monotonic()


class PrincipalCache:
    def __init__(self, epoch: AuthEpoch) -> None:
        self.epoch = epoch
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Principal | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() > entry.fresh_until or self.epoch.current() != entry.epoch:
            with self._lock:
                self._entries.pop(key, None)
            return None
        return entry.principal

    def fresh_until(self, key: str) -> float | None:
        """When the entry of ``key`` goes stale (``time.monotonic()``), from memory alone: no epoch read. None: no
        entry."""
        entry = self._entries.get(key)
        return None if entry is None else entry.fresh_until

    def begin(self) -> int | None:
        """The epoch to hand to ``put`` after the store look-up: read it before the look-up starts."""
        return self.epoch.current()

    def put(self, key: str, principal: Principal, epoch: int | None, fresh_for: float) -> None:
        if epoch is None or fresh_for <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = _Entry(principal, epoch, time.monotonic() + fresh_for)


class EpochSample:
    """The epoch as last read, read again at most every ``every`` s however many ask: what long waits (the
    homepage's long-poll) look at each second to learn that someone's access changed, at one read per second
    per process. Event-loop only."""

    def __init__(self, epoch: AuthEpoch, every: float) -> None:
        self.epoch = epoch
        self.every = every
        self._value: int | None = None
        self._read_at = -float("inf")

    def current(self) -> int | None:
        now = time.monotonic()
        if now - self._read_at >= self.every:
            self._value, self._read_at = self.epoch.current(), now
        return self._value
