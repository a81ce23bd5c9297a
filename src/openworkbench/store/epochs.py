"""The auth and routes epochs read together, once per proxied request instead of once per cache.

A proxied request checks two caches on the event loop: its caller's sign-in (``auth_epoch``) and its session's
route (``routes_epoch``, proxy/routes.py). Each check must see every change committed before the request came
in, which any read that *began* after the request came in does. So both counters are read in one round trip,
each read is remembered with the time it began, and the route check takes the sign-in check's read when that
began after its request did (``current_since``); anything else reads anew. On PostgreSQL this halves what a
proxied request costs the database (one prepared single-row SELECT instead of two).
"""

from __future__ import annotations

import math
import threading
import time

from openworkbench.store.epoch import NoEpoch, PostgresEpoch, SqliteEpoch, open_epoch

TABLES = ("auth_epoch", "routes_epoch")


class Epochs:
    def __init__(self, reader: SqliteEpoch | PostgresEpoch | NoEpoch) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self._began = -math.inf  # time.perf_counter() at which the remembered read began
        self._values: tuple[int, ...] | None = None
        self._closed = False

    def read(self) -> tuple[int, ...] | None:
        began = time.perf_counter()
        values = self._reader.read()
        if values is not None:
            with self._lock:
                if began > self._began:
                    self._began, self._values = began, values
        return values

    def since(self, began: float) -> tuple[int, ...] | None:
        """The counters as read by a read that began at or after ``began`` (a perf_counter time): the
        remembered one if it did, else a new one."""
        with self._lock:
            if self._began >= began and self._values is not None:
                return self._values
        return self.read()

    def counter(self, index: int) -> Counter:
        return Counter(self, index)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._reader.close()


class Counter:
    """One of the counters, as the caches use it (``AuthEpoch``)."""

    def __init__(self, epochs: Epochs, index: int) -> None:
        self.epochs = epochs
        self.index = index

    def current(self) -> int | None:
        values = self.epochs.read()
        return None if values is None else values[self.index]

    def current_since(self, began: float) -> int | None:
        values = self.epochs.since(began)
        return None if values is None else values[self.index]

    def close(self) -> None:
        self.epochs.close()


def open_epochs(url: str) -> Epochs:
    """The auth epoch (``counter(0)``) and the routes epoch (``counter(1)``) of the store at ``url``."""
    return Epochs(open_epoch(url, TABLES))
