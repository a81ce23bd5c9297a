"""glibc malloc's arenas for the server process: at most ``server.malloc_arena_max`` (default 2).

glibc gives each new thread an arena of its own, up to 8 per core, and every arena keeps its own high-water
mark. With the 40 worker threads rendering large answers, bench/arenas.py saw RSS grow 167 → 240 MiB and stay,
against 172 → 187 MiB with 2 arenas, at 0.88-1.01 times the throughput over three runs (docs/performance.md).
``MALLOC_ARENA_MAX`` in the server's environment, an operator's explicit choice, wins over the setting. Not
glibc: nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re

M_ARENA_MAX = -8  # glibc's malloc.h
ENV = "MALLOC_ARENA_MAX"


@functools.cache  # the process's own C library: looked up once
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_info, libc.open_memstream  # noqa: B018 (glibc's, or not glibc)
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(maximum: int) -> int | None:
    """Call before any thread starts. The limit now in force; None when left to glibc (0, the environment
    variable set, or a C library that is not glibc)."""
    if maximum <= 0 or ENV in os.environ or (libc := _libc()) is None:
        return None
    return maximum if libc.mallopt(M_ARENA_MAX, maximum) == 1 else None


def arena_count() -> int | None:
    """How many arenas malloc has made in this process (malloc_info's ``<heap>`` elements); None if unknown."""
    libc = _libc()
    if libc is None:
        return None
    buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    if not stream:
        return None
    try:
        libc.malloc_info(0, ctypes.c_void_p(stream))
    finally:
        libc.fclose(ctypes.c_void_p(stream))
    try:
        text = ctypes.string_at(buffer.value, size.value).decode(errors="replace") if buffer.value else ""
    finally:
        libc.free(buffer)
    return len(re.findall(r"<heap nr=", text)) or None
