"""Read-through caches on the event loop: one read path, tried first where the store must not be touched.

A read such as ``get_session`` goes through caches (the job views, the session views): memory when it is
current, the store when it is not. The RPC (api/rpc.py) runs such a method first on the event loop, inside
``memory_only()``; a cache that would need the store there calls ``store_allowed()``, which raises
``NeedsStore``, and the RPC runs the very same method again in a worker thread, where the cache reads through.
One method per read, no cached twin to keep in step with it.

``NeedsStore`` is control flow between the RPC and a cache, never an error a client sees: it is not a
WorkbenchError (errors.py) and never leaves ``api/rpc.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_MEMORY_ONLY: ContextVar[bool] = ContextVar("memory_only", default=False)


class NeedsStore(Exception):
    """Memory cannot answer this read: run it again where the store may be asked."""


def store_allowed() -> None:
    """Call before a cache reads the store: raises ``NeedsStore`` inside ``memory_only()``."""
    if _MEMORY_ONLY.get():
        raise NeedsStore


@contextmanager
def memory_only() -> Iterator[None]:
    """Reads inside may use memory alone (the event loop: a store query would stall every request)."""
    token = _MEMORY_ONLY.set(True)
    try:
        yield
    finally:
        _MEMORY_ONLY.reset(token)
