"""Failed sign-ins slow down further ones: per username and per client address, each on its own.

After the n-th failure in a row of a key, that key is locked for ``base * 2**(n-1)`` seconds (at most ``cap``):
the failed attempt itself is answered only after that delay, and any attempt made meanwhile under the same key
(a second connection of a guesser) is refused without its password being checked. Nor is one checked while
another attempt for the same username is (guesses at one account never run in parallel), nor beyond
``PARALLEL_PER_ADDRESS`` at once from one address (people behind one NAT still sign in together). A person who
mistypes never meets the lock: the form comes back when it has passed. A key is forgotten after ``FORGET_S``
without failures, and a success clears its username's count (not its address's: signing into one's own account
must not reset a guesser's count).

In memory, for one server process: several servers behind one balancer each count on their own, and a restart
forgets. Unknown and known usernames are counted alike, so the lock says nothing about who exists.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

FORGET_S = 15 * 60.0
MAX_KEYS = 100_000  # beyond, the longest-quiet keys go first: a flood of names cannot grow memory without bound
PARALLEL_PER_ADDRESS = 4
BUSY_RETRY_S = 1.0  # what a refused parallel attempt is told to wait


@dataclass
class Attempt:
    """One sign-in being checked, under its username's and its address's keys."""

    user_key: str
    address_key: str
    open: bool = True


@dataclass
class _Failures:
    count: int
    locked_until: float  # time.monotonic()
    last: float


class Throttle:
    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s = base_s
        self.cap_s = max(cap_s, base_s)
        self._keys: dict[str, _Failures] = {}
        self._checking: Counter[str] = Counter()  # attempts being checked, per key
        self._lock = threading.Lock()
        self.failures = 0  # failed sign-ins since start (metrics)
        self.refused_unchecked = 0  # attempts refused without a check: locked or parallel (metrics)

    def begin(self, user_key: str, address_key: str) -> Attempt | float:
        """The attempt, to check now (then ``failed``, ``succeeded`` or ``end`` it); or the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            locks = (self._keys[key].locked_until - now for key in (user_key, address_key) if key in self._keys)
            wait = max(locks, default=0.0)
            if self._checking[user_key] >= 1 or self._checking[address_key] >= PARALLEL_PER_ADDRESS:
                wait = max(wait, BUSY_RETRY_S)
            if wait > 0:
                self.refused_unchecked += 1
                return wait
            self._checking.update((user_key, address_key))
            return Attempt(user_key, address_key)

    def end(self, attempt: Attempt) -> None:
        """The attempt is over, whatever ended it (idempotent)."""
        with self._lock:
            self._done(attempt)

    def failed(self, attempt: Attempt) -> float:
        """Count a failure under both keys; the delay to answer it after (the longer of the two locks)."""
        now = time.monotonic()
        delay = 0.0
        with self._lock:
            self._done(attempt)
            self.failures += 1
            if len(self._keys) >= MAX_KEYS:
                self._forget(now)
            for key in (attempt.user_key, attempt.address_key):
                entry = self._keys.get(key)
                count = 1 if entry is None or now - entry.last > FORGET_S else entry.count + 1
                key_delay = min(self.base_s * 2 ** min(count - 1, 30), self.cap_s)
                self._keys[key] = _Failures(count, now + key_delay, now)
                delay = max(delay, key_delay)
        return delay

    def succeeded(self, attempt: Attempt) -> None:
        with self._lock:
            self._done(attempt)
            self._keys.pop(attempt.user_key, None)

    def _done(self, attempt: Attempt) -> None:
        if not attempt.open:  # counted out once, however many of end/failed/succeeded it meets
            return
        attempt.open = False
        self._checking.subtract((attempt.user_key, attempt.address_key))
        for key in (attempt.user_key, attempt.address_key):
            if self._checking[key] <= 0:
                del self._checking[key]

    def _forget(self, now: float) -> None:
        stale = [key for key, entry in self._keys.items() if now - entry.last > FORGET_S]
        for key in stale:
            del self._keys[key]
        if len(self._keys) >= MAX_KEYS:  # all recent: drop the older half
            for key, _ in sorted(self._keys.items(), key=lambda item: item[1].last)[: MAX_KEYS // 2]:
                del self._keys[key]
