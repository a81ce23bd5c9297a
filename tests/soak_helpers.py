"""The churn and the measures of the soak (tests/test_load_soak.py): sessions and jobs started and stopped while
the load runs, the server's resources sampled through /metrics, their slopes, and the store's rows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server
from tests.fuzz_helpers import resources
from tests.load_helpers import SESSION_START_TIMEOUT, SLEEPER_SCRIPT, Load

ENDED = ("suspended", "failed", "killed", "finished", "canceled")
# What /metrics gives (metric, scale): the process collector's RSS and fds, and our own two gauges.
GAUGES = {"rss_mb": ("process_resident_memory_bytes", 1 / 2**20), "fds": ("process_open_fds", 1.0),
          "threads": ("openworkbench_threads", 1.0), "tasks": ("openworkbench_asyncio_tasks", 1.0)}


@dataclass
class Samples:
    times: list[float] = field(default_factory=list)  # seconds since the load began
    series: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def slopes(self, warm_up: float) -> dict[str, float]:
        """Least-squares slope per minute of each gauge over the samples after ``warm_up`` seconds."""
        kept = [i for i, t in enumerate(self.times) if t >= warm_up]
        times = [self.times[i] for i in kept]
        return {name: round(statistics.linear_regression(times, [values[i] for i in kept]).slope * 60, 3)
                for name, values in self.series.items()}

    def level(self, name: str, at: float, window: float = 30.0) -> float:
        """The median of ``name`` over the samples within ``window`` s of ``at`` (one sample is noise)."""
        pairs = list(zip(self.times, self.series[name], strict=True))
        near = [value for t, value in pairs if abs(t - at) <= window]
        return statistics.median(near) if near else min(pairs, key=lambda pair: abs(pair[0] - at))[1]

    def memory(self, warm_up: float) -> dict[str, float]:
        """RSS judged after the warm-up, two ways: its slope from ``warm_up`` to the end (and over the last
        third alone), and its level at ``warm_up`` against the end's, per job made in between."""
        end = self.times[-1]
        window = min(30.0, end / 10)
        start_mb, end_mb = self.level("rss_mb", warm_up, window), self.level("rss_mb", end, window)
        jobs = self.level("jobs", end, window) - self.level("jobs", warm_up, window)
        return {"rss_first_mb": round(self.series["rss_mb"][0], 1), "warm_up_s": round(warm_up),
                "rss_at_warm_up_mb": round(start_mb, 1), "rss_at_end_mb": round(end_mb, 1),
                "slope_after_warm_up_mb_per_min": self.slopes(warm_up)["rss_mb"],
                "slope_last_third_mb_per_min": self.slopes(end * 2 / 3)["rss_mb"],
                "bytes_per_job_after_warm_up": round((end_mb - start_mb) * 2**20 / max(jobs, 1))}


def parse_gauges(text: str) -> dict[str, float]:
    found = {sample.name: sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples}
    return {name: found[metric] * scale for name, (metric, scale) in GAUGES.items()}


def gauges(server: Server, admin: str) -> dict[str, float]:
    answer = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=60)
    assert answer.status_code == 200, answer.text
    return parse_gauges(answer.text)


async def sampler(load: Load, admin: str, samples: Samples, every: float = 2.0) -> None:
    began = time.monotonic()
    while load.running():
        try:
            async with load.http.get(f"{load.base}/metrics", headers={"Authorization": f"Bearer {admin}"}) as resp:
                text = await resp.text()
            if resp.status != 200:
                load.tally.error("/metrics", f"{resp.status} {text}")
            else:
                samples.times.append(time.monotonic() - began)
                for name, value in parse_gauges(text).items():
                    samples.series[name].append(value)
                samples.series["jobs"].append(len(load.jobs) + len(load.stopped))  # made so far: per-job growth
        except (aiohttp.ClientError, TimeoutError) as exc:
            load.tally.error("/metrics", repr(exc))
        await asyncio.sleep(every)


async def wait_session(load: Load, session_id: str, states: tuple[str, ...]) -> dict[str, Any]:
    """The session once it is in one of ``states`` or has ended; {} if it never did in time."""
    deadline = time.monotonic() + SESSION_START_TIMEOUT
    while time.monotonic() < deadline:
        result = await load.rpc("get_session (churn's poll)", "get_session", session_id=session_id)
        if result is not None:
            session: dict[str, Any] = result["sessions"][0]
            if session["activity_state"] in states + ENDED:
                return session
        await asyncio.sleep(0.25)
    return {}


async def session_cycle(load: Load) -> None:
    """Launch a JupyterLab, use it through the proxy once it runs, stop it, and see it end."""
    began = time.perf_counter()
    result = await load.rpc("launch_session", "launch_session", workbench="JupyterLab", name="churn")
    if result is None:
        return
    load.sessions.append(result["id"])
    up = await wait_session(load, result["id"], ("running",))
    if up.get("activity_state") != "running":
        load.tally.error("session churn", f"{result['id']} never ran: {up}")
    else:
        load.tally.record("session churn: launch_session to running", began)
        try:  # an error here is one of the run; the session is stopped all the same
            async with load.http.get(f"{load.base}{result['url']}api/status", headers=load.auth) as resp:
                if resp.status != 200:
                    load.tally.error("session churn", f"{result['id']} proxied status {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            load.tally.error("session churn", f"{result['id']} proxied status: {exc!r}")
    if await load.rpc("stop_session", "stop_session", session_ids=result["id"]) is None:
        return
    down = await wait_session(load, result["id"], ENDED)
    if down.get("activity_state") not in ("finished", "killed"):
        load.tally.error("session churn", f"{result['id']} did not end stopped: {down}")


async def sleeper_cycle(load: Load) -> None:
    """Launch a job that runs until stopped; once its stream shows it running, stop it and follow it out."""
    result = await load.rpc("launch_job", "launch_job", job={"name": "soak sleeper", "command": SLEEPER_SCRIPT})
    if result is None:
        return
    job_id = result["job"]["id"]
    load.stopped.append(job_id)
    text, body = "", {"method": "get_job_output", "kwparams": {"job_id": job_id}}
    async with load.http.post(f"{load.base}/api/get_job_output", json=body, headers=load.auth) as resp:
        async for raw in resp.content:
            if not text:  # the first line: it runs
                await load.rpc("stop_job", "stop_job", job_id=job_id)
            text += str(json.loads(raw).get("output"))
    if text != "ready\n":
        load.tally.error("stop_job", f"{job_id}: the stopped job's stream was {text!r}")
    await asyncio.sleep(0.5)


def row_counts(server: Server) -> dict[str, int]:
    """Rows of every table of the server's SQLite store, read beside the server (read-only)."""
    path = server.data_dir / "workbench.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                               "AND name NOT LIKE 'sqlite_%' AND name != 'alembic_version'")]
        return {table: db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}


def transitions_of(server: Server, session_ids: list[str]) -> int:
    """The state history rows (session_transitions) of these sessions, read beside the server."""
    path = server.data_dir / "workbench.db"
    marks = ", ".join("?" * len(session_ids))
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        query = f"SELECT count(*) FROM session_transitions WHERE session_id IN ({marks})"
        return int(db.execute(query, session_ids).fetchone()[0])


@dataclass(frozen=True)
class Level:
    """What must come back to where it was: fds (but the store's pool), threads, asyncio tasks."""

    fds: int
    threads: int
    tasks: int

    @staticmethod
    def now(server: Server, admin: str) -> Level:
        used = resources(server)
        return Level(used.fds, used.threads, int(gauges(server, admin)["tasks"]))

    def within(self, baseline: Level) -> bool:
        return self.fds <= baseline.fds and self.threads <= baseline.threads and self.tasks <= baseline.tasks


def settled(server: Server, admin: str, baseline: Level, timeout: float = 90) -> tuple[Level, float]:
    """The level once back to ``baseline`` (or at ``timeout``), and how long that took: idle worker threads
    end after 10 s (anyio), idle connections to the IDEs after 4 s (the proxy's pool)."""
    began = time.monotonic()
    while True:
        level = Level.now(server, admin)
        if level.within(baseline) or time.monotonic() - began > timeout:
            return level, round(time.monotonic() - began, 1)
        time.sleep(0.5)


def snapshot_times(text: str, seconds: float) -> list[float]:
    """OWB_SOAK_SNAPSHOTS ("120,600,...": seconds into the load), each capped to just before the load ends."""
    return sorted(min(float(at), seconds - 1) for at in text.split(",") if at.strip())


async def snapshots(pid: int, times: list[float]) -> None:
    """Ask the server under test (started with OWB_TRACEMALLOC) for a tracemalloc snapshot at each time."""
    began = time.monotonic()
    for at in times:
        await asyncio.sleep(max(0.0, at - (time.monotonic() - began)))
        os.kill(pid, signal.SIGUSR2)


def trimmed(server: Server) -> dict[str, Any]:
    """RSS and malloc's heap before and after the server (with OWB_TRACEMALLOC) trims malloc's free memory."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGUSR1)
    path = server.data_dir / "tracemalloc" / f"{server.proc.pid}-trim.json"
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, "no trim measurement"
        time.sleep(0.2)
    return dict(json.loads(path.read_text()))  # renamed into place whole
