"""One server per SQLite store: ``workbench serve`` holds an exclusive ``flock`` beside the database file for
its whole life. A second server on the same file would run a second job monitor and session watch over the
same rows, which only PostgreSQL's advisory locks can arbitrate (services/leadership.py). PostgreSQL: no lock,
any number of replicas. The lock is the kernel's: a server killed with SIGKILL frees it with its process."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from sqlalchemy.engine import make_url

from openworkbench.errors import StoreInUse

_held: list[int] = []  # the lock's file descriptor, open for the life of the process


def lock_path(url: str) -> Path | None:
    """The lock file of a SQLite store at ``url``; None for PostgreSQL or an in-memory database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve().with_name(Path(parsed.database).name + ".serve.lock")


def hold_serve_lock(url: str) -> None:
    """Take the store's serve lock, or raise ``StoreInUse`` naming the store and who holds it."""
    path = lock_path(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        database = path.with_name(path.name.removesuffix(".serve.lock"))
        raise StoreInUse(f"the SQLite store {database} is already served by {holder}; SQLite allows one server "
                         f"(run replicas on PostgreSQL)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _held.append(fd)
