"""Opt-in tracemalloc snapshots of a running server, for finding what grows (docs/reliability.md, soak).

Off unless the server is started with ``OWB_TRACEMALLOC`` set to a number of frames (1-100) per allocation.
Then tracemalloc traces from before the app is built, and each SIGUSR2 writes a snapshot to
``<data_dir>/tracemalloc/<pid>-<n>.snapshot`` (mode 0600). A signal and a file need no API surface: only who
can signal the server's process (its own user or root) gets a snapshot, and only who can read the data
directory reads it. ``python -m openworkbench.memtrace OLD NEW`` prints the top growth between two of them.
Beside each snapshot, ``.json`` has what tracemalloc does not see (``native_memory``); SIGUSR1 measures how
much of RSS is free memory glibc's malloc keeps, by trimming it (``<pid>-trim.json``: before and after).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import json
import linecache
import os
import signal
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from openworkbench import allocator

ENV = "OWB_TRACEMALLOC"
MAX_FRAMES = 100


def frames_wanted(value: str | None) -> int:
    """Frames per traced allocation from ``OWB_TRACEMALLOC``; 0 (off) if unset, empty or not a number."""
    try:
        frames = int(value or "0")
    except ValueError:
        return 0
    return min(max(frames, 0), MAX_FRAMES)


def install(data_dir: Path) -> bool:
    """Start tracing and arm SIGUSR2 if ``OWB_TRACEMALLOC`` asks for it; True if it did."""
    frames = frames_wanted(os.environ.get(ENV))
    if frames == 0:
        return False
    tracemalloc.start(frames)
    folder = data_dir / "tracemalloc"
    counter = itertools.count(1)

    def dump(signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread (the event loop's) between bytecodes: the loop pauses while it writes.
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}-{next(counter)}.snapshot"
        # Each file appears whole (renamed into place), the figures first: a snapshot seen has its figures.
        _whole(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(native_memory())))
        _whole(path, lambda tmp: tracemalloc.take_snapshot().dump(str(tmp)))

    def trim(signum: int, frame: FrameType | None) -> None:
        # A measurement: how much of RSS is free memory malloc holds (returned to the system by the trim).
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        before = native_memory()
        ctypes.CDLL(None).malloc_trim(0)
        after = native_memory()
        _whole(folder / f"{os.getpid()}-trim.json", lambda tmp: tmp.write_text(json.dumps({"before": before,
                                                                                          "after": after})))

    signal.signal(signal.SIGUSR2, dump)
    signal.signal(signal.SIGUSR1, trim)
    return True


def _whole(path: Path, write: Callable[[Path], object]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def native_memory() -> dict[str, float]:
    """What tracemalloc does not see, in MB: RSS, SQLite's own allocations (its page caches), and glibc
    malloc's heap (in use, and free but kept: fragmentation); a field it cannot read is left out."""
    found = {"traced": tracemalloc.get_traced_memory()[0] / 2**20,
             "tracemalloc_itself": tracemalloc.get_tracemalloc_memory() / 2**20}
    with open("/proc/self/statm") as statm:
        found["rss"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    try:
        sqlite = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
        found["sqlite"] = sqlite.sqlite3_memory_used() / 2**20
    except (OSError, AttributeError):
        pass
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        found.update(malloc_arena=info.arena / 2**20, malloc_mmap=info.hblkhd / 2**20,
                     malloc_in_use=info.uordblks / 2**20, malloc_free=info.fordblks / 2**20)
    except (OSError, AttributeError):
        pass
    if (arenas := allocator.arena_count()) is not None:
        found["malloc_arenas"] = arenas
    return {name: round(value, 2) for name, value in found.items()}


class _MallInfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (2.33+); mallinfo2() sums over every arena (the worker threads' too).
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def top_growth(old: Path, new: Path, limit: int = 25) -> list[str]:
    """The ``limit`` traceback groups that grew most from ``old`` to ``new`` (tracemalloc's own frames left out)."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, linecache.__file__)]
    before = tracemalloc.Snapshot.load(str(old)).filter_traces(ignore)
    after = tracemalloc.Snapshot.load(str(new)).filter_traces(ignore)
    lines = [f"total traced: {_mb(before)} MB -> {_mb(after)} MB"]
    for stat in after.compare_to(before, "traceback")[:limit]:
        lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks "
                     f"(now {stat.size / 1024:.1f} KiB in {stat.count})")
        lines += [f"    {line}" for line in stat.traceback.format(limit=8, most_recent_first=True)]
    return lines


def _mb(snapshot: tracemalloc.Snapshot) -> str:
    return f"{sum(stat.size for stat in snapshot.statistics('filename')) / 2**20:.1f}"


if __name__ == "__main__":
    print("\n".join(top_growth(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 25)))
