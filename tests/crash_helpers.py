"""Helpers of tests/test_crash.py: launch storms that a SIGKILL cuts short, and what must hold afterwards."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.conftest import FINAL, WORKBENCH, Server, clean_env


@dataclass
class Launch:
    """One launch_job call: the job's unique tag, its exit code, and what the client got back."""

    tag: str
    code: int
    job_id: str | None = None  # set when a success reply arrived
    error: str = ""  # the client's error when none did
    sent: bool = False  # False: the connection was refused, the request never reached a server


def command(tag: str, code: int, marker: Path) -> str:
    """A job that says it ran (one line appended to ``marker``), prints known lines, sleeps, exits ``code``."""
    return (f"echo {tag} >> {marker}; echo start {tag}; echo {tag} err >&2; sleep 0.{code}; "
            f"for i in 1 2 3; do echo {tag} line $i; done; exit {code}")


def expected_output(tag: str) -> tuple[str, str]:
    return f"start {tag}\n" + "".join(f"{tag} line {i}\n" for i in (1, 2, 3)), f"{tag} err\n"


@dataclass
class Storm:
    """Launches from ``clients`` threads until ``count`` calls are made or the server goes away."""

    server: Server
    token: str
    marker: Path
    prefix: str = field(default_factory=lambda: f"crash{secrets.token_hex(3)}")
    launches: list[Launch] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new(self, index: int) -> Launch:
        launch = Launch(f"{self.prefix}-{index}", index % 7)
        with self._lock:
            self.launches.append(launch)
        return launch

    def replied(self) -> int:
        return sum(1 for launch in self.launches if launch.job_id)

    def call(self, client: httpx.Client, launch: Launch) -> bool:
        """Make the call; False once the server is gone (the storm's client stops then)."""
        body = {"method": "launch_job", "kwparams": {"job": {
            "name": launch.tag, "command": command(launch.tag, launch.code, self.marker)}}}
        try:
            response = client.post(f"{self.server.url}/api/launch_job", json=body,
                                   headers={"Authorization": f"Bearer {self.token}"})
        except httpx.ConnectError as exc:
            launch.error = f"refused: {exc}"
            return False
        except httpx.TransportError as exc:  # sent, and the server died before it answered
            launch.sent, launch.error = True, f"{type(exc).__name__}: {exc}"
            return False
        launch.sent = True
        body = response.json()
        assert response.status_code == 200 and "error" not in body, body  # a live server never refuses one
        launch.job_id = body["result"]["job"]["id"]
        return True

    def run(self, count: int, clients: int, stop: threading.Event) -> None:
        """``count`` launches over ``clients`` threads; a client stops at its first failed call or at ``stop``."""
        counter = iter(range(len(self.launches), len(self.launches) + count))

        def client_loop() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    with self._lock:
                        index = next(counter, None)
                    if index is None or not self.call(client, self.new(index)):
                        return

        with ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(client_loop) for _ in range(clients)]:
                future.result()


def all_jobs(server: Server, token: str) -> dict[str, dict[str, Any]]:
    """Every job of the token's user, by name (the launches' tags are unique names)."""
    jobs = server.rpc("get_session", token, include_all_jobs=True)["jobs"]
    return {job["name"]: job for job in jobs}


def wait_all_final(server: Server, token: str, prefix: str, timeout: float = 120) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {name: job for name, job in all_jobs(server, token).items() if name.startswith(prefix)}
        open_ = [job for job in jobs.values() if job["status"] not in FINAL]
        if not open_:
            return jobs
        assert time.monotonic() < deadline, f"{len(open_)} jobs never ended, e.g. {open_[0]}"
        time.sleep(0.5)


def output_of(server: Server, token: str, job_id: str) -> tuple[str, str]:
    body = {"method": "get_job_output", "kwparams": {"job_id": job_id}}
    response = server.client.post(f"{server.url}/api/get_job_output", json=body,
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    streams = {"stdout": "", "stderr": ""}
    for line in response.text.splitlines():
        item = json.loads(line)
        assert "error" not in item, item
        streams[item["outputType"]] += item["output"]
    return streams["stdout"], streams["stderr"]


@dataclass
class Verdict:
    replied: int = 0
    unreplied_exist: int = 0
    unreplied_nothing: int = 0
    never_sent: int = 0


def verify_launches(server: Server, token: str, storm: Storm, others: tuple[str, ...] = ()) -> Verdict:
    """Every replied launch ran once to its end with its code and output; an unreplied one did too, or left
    nothing: no row, no job directory, no line in the marker, no process. ``others``: tokens of the other users
    with jobs on the server (their job directories are not strays)."""
    jobs = wait_all_final(server, token, storm.prefix)
    ran = storm.marker.read_text().split() if storm.marker.exists() else []
    twice = {tag for tag in ran if ran.count(tag) > 1}
    assert not twice, f"jobs ran twice: {sorted(twice)}"
    verdict = Verdict()
    for launch in storm.launches:
        job = jobs.get(launch.tag)
        if launch.job_id is not None:
            verdict.replied += 1
            assert job is not None and job["id"] == launch.job_id, f"replied launch {launch.tag} lost: {job}"
        elif job is None:
            assert launch.tag not in ran, f"{launch.tag}: no row, yet it ran"
            verdict.never_sent += not launch.sent
            verdict.unreplied_nothing += launch.sent
            continue
        else:
            verdict.unreplied_exist += 1
        assert (job["status"], job["exitCode"]) == ("Finished", launch.code), (launch, job)
        assert output_of(server, token, job["id"]) == expected_output(launch.tag), (launch, job)
        assert ran.count(launch.tag) == 1, f"{launch.tag} ran {ran.count(launch.tag)} times"
    stored = {job["id"] for each in (token, *others)
              for job in server.rpc("get_session", each, include_all_jobs=True)["jobs"]}
    strays = set(os.listdir(server.data_dir / "jobs")) - stored - {"launcher.log"}
    assert not strays, f"job directories without a row: {sorted(strays)}"
    assert not processes_with(storm.prefix), "processes of the storm are left"
    return verdict


def processes_with(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def store_check(server: Server, settle_s: float = 0) -> subprocess.CompletedProcess[str]:
    """``workbench store check`` on the server's store, as the operator runs it."""
    return subprocess.run([WORKBENCH, "store", "check", "--data-dir", str(server.data_dir), "--config",
                           str(server.config_file), "--settle-s", str(settle_s)],
                          capture_output=True, text=True, env=clean_env(), timeout=120)


# -- aiming the kill --------------------------------------------------------------------------------------
# A probe says what the server's database is doing right now: "write" (a transaction that has written is
# open), "read" (a transaction is open, nothing written yet) or "" (none).
Probe = Callable[[], str]


def pg_probe(database_url: str) -> tuple[Probe, Callable[[], None]]:
    """Backends of the server's database (not this probe's own) inside a transaction: pg_stat_activity."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    conn = engine.connect()
    query = sa.text("SELECT count(backend_xid), count(xact_start) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")

    def probe() -> str:
        writing, open_ = conn.execute(query).one()
        return "write" if writing else "read" if open_ else ""

    return probe, conn.close


def sqlite_probe(path: Path) -> tuple[Probe, Callable[[], None]]:
    """A write transaction holds SQLite's write lock: BEGIN IMMEDIATE, never waiting, fails while it is open.
    (Read transactions take no lock in WAL mode: they are not seen.)"""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)

    def probe() -> str:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return "write"
            raise
        conn.execute("ROLLBACK")
        return ""

    return probe, conn.close


def kill_when(server: Server, probe: Probe, delay: float, aim_s: float) -> str:
    """SIGKILL the server after ``delay`` s, at the first moment within ``aim_s`` s that ``probe`` sees a write
    transaction open, else at the end of that time; what the probe saw last before the kill."""
    time.sleep(delay)
    deadline = time.monotonic() + aim_s
    seen = probe()
    while seen != "write" and time.monotonic() < deadline:
        time.sleep(0.002)  # the probe must not starve the server of its own database
        seen = probe()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=15)
    server.proc = None
    return seen


def after_replies(storm: Storm, rng: random.Random) -> float:
    """Wait for a few (0 to 8) more replies of the storm, then a random delay: the seconds it should be."""
    target = storm.replied() + rng.randint(0, 8)
    deadline = time.monotonic() + 120
    while storm.replied() < target and time.monotonic() < deadline:
        time.sleep(0.01)
    return rng.uniform(0.0, 0.5)
