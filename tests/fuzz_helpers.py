"""Shared by the fuzz tests (tests/test_fuzz_*.py): a server configured so generated calls stay cheap and
harmless, and the counts the tests compare before and after (store rows, the server's fds and threads)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Server

TABLES = ("jobs", "sessions", "users", "api_tokens")
IDES = ("JupyterLab", "Jupyter Notebook", "VS Code", "RStudio")


def fuzz_config(runtime_dir: Path) -> str:
    """Jobs run for real, as an unprivileged user only (no root: the fuzzer's commands are random); sessions
    fail at once (every IDE is /bin/false) and a user may hold only two that have not ended."""
    ides = "".join(f'[ides."{name}"]\nexe = "/bin/false"\n' for name in IDES)
    return (f'[auth]\nallowed_system_users = []\n'
            f'[sessions]\nruntime_dir = "{runtime_dir}"\nmax_per_user = 2\nstart_timeout_s = 10\n'
            f'stop_grace_s = 1\nhook_timeout_s = 5\n' + ides)


@contextlib.contextmanager
def fuzz_server(data_dir: Path) -> Iterator[Server]:
    # The runtime dir must be outside pytest's 0700 temp dirs: the session's user must reach it.
    runtime = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    server = Server(data_dir, config_text=fuzz_config(runtime)).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def row_counts(server: Server) -> dict[str, int]:
    """Rows per table, read straight from the server's SQLite file (read-only, beside the server)."""
    path = server.data_dir / "workbench.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}


# SQLAlchemy's pool keeps up to 5 SQLite connections open between calls (QueuePool's pool_size), each holding
# the database file and its WAL: those fds follow the busiest moment so far, bounded; they are no leak.
STORE_FDS_MAX = 5 * 3


@dataclass(frozen=True)
class Resources:
    fds: int  # every fd but the store's pooled connections'
    threads: int
    store_fds: int
    open: tuple[str, ...] = ()  # what the fds are (a failure message shows which ones leaked)


def _target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed between listing and reading
        return "?"


def resources(server: Server) -> Resources:
    assert server.proc is not None
    pid = server.proc.pid
    targets = tuple(sorted(_target(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")))
    store = str(server.data_dir / "workbench.db")
    others = tuple(target for target in targets if not target.startswith(store))
    return Resources(len(others), len(os.listdir(f"/proc/{pid}/task")), len(targets) - len(others), others)


def settled_resources(server: Server, baseline: Resources, timeout: float = 30) -> Resources:
    """The server's fds and threads once they are back to ``baseline`` or ``timeout`` has passed: closing a
    connection and ending a worker thread take the event loop a moment after the client is gone."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources(server)
        # The pool's overflow connections (above its 5) close when their call returns: one still in use at this
        # instant is no leak (CI once saw 16 store fds at the first look), so the store's count settles too.
        settled = now.fds <= baseline.fds and now.threads <= baseline.threads and now.store_fds <= STORE_FDS_MAX
        if settled or time.monotonic() > deadline:
            assert now.store_fds <= STORE_FDS_MAX, now
            return now
        time.sleep(0.2)


def tracebacks(server: Server) -> list[str]:
    """Lines of the server's log that start a traceback."""
    return [line for line in server.log().splitlines() if re.search(r"Traceback \(most recent call last\)", line)]
