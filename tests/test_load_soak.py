"""Load and soak (issue 14, points 3 and 6): 64 concurrent clients against a real server for OWB_SOAK_SECONDS
(60 in `make test`, 600 in `make soak`) while JupyterLab sessions and jobs are started and stopped beside them.

The 64 clients (tests/load_helpers.py) mix get_session (the user's list, and one session), launch_job of small
real Local jobs, get_job_output followers that read each job's NDJSON stream to its end, and requests proxied
through /s/<id>/ to 5 running JupyterLab sessions. The churn (tests/soak_helpers.py) launches, uses and stops
JupyterLab sessions and stops running jobs with stop_job, while /metrics is sampled: RSS, open fds, threads,
asyncio tasks. What must hold: not one wrong answer; every job launched ended Finished with its exit code and
its whole output (read by a follower); the store grew by exactly the rows made; fds, threads and tasks back
where they were once the churn is over; the RSS slope after the warm-up under RSS_SLOPE_MAX_MB_PER_MIN.
Run with -s for the figures (p50/p99 per call kind, counts, slopes).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openworkbench.memtrace import ENV, frames_wanted
from tests.conftest import Server
from tests.load_helpers import (
    JOB_EXIT,
    SLEEPER_EXIT,
    Load,
    forever,
    launcher,
    list_sessions,
    loop_lag,
    one_session,
    proxied,
)
from tests.sessions_helpers import launch, session_server, wait_state
from tests.soak_helpers import (
    Level,
    Samples,
    gauges,
    row_counts,
    sampler,
    session_cycle,
    settled,
    sleeper_cycle,
    snapshot_times,
    snapshots,
    transitions_of,
    trimmed,
)

SECONDS = float(os.environ.get("OWB_SOAK_SECONDS", "60"))
LONG = SECONDS >= 300
# Pools, caches and the allocator's arenas fill first; flatness is judged after. The long form leaves out its
# first third (600 s: 200 s; 1800 s: 600 s), past the climb measured in docs/reliability.md ("Soak memory").
WARM_UP = SECONDS / 3 if LONG else 15.0
LABS = 5
SNAPSHOTS = os.environ.get("OWB_SOAK_SNAPSHOTS", "")  # seconds into the load: "120,600,1200,1800"
# The 64 clients: how many run each kind of call.
MIX = {"list": 10, "single": 10, "launch": 8, "follow": 16, "proxy": 20}
# A 60 s run is still on the warm-up climb (5.1-5.3 MB/min measured, 9.3 once the session state history was
# added). A leak of 2 KB per call would add ~18 MB/min at the ~9,000 calls a minute made here: the short form's
# 16 MB/min catches leaks of a request's worth of objects and stays clear of the warm-up. The long form judges
# the slope over its last two thirds: 1 MB/min there is ~150 B a call, or ~6 KB a job at ~170 jobs a minute;
# it also reports the level at the end of the warm-up against the end's, per job made in between.
RSS_SLOPE_MAX_MB_PER_MIN = 1.0 if LONG else 16.0

pytestmark = pytest.mark.skipif(not Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists(),
                                reason="IDEs not installed: run scripts/install-ides.sh (make test does)")


def start_labs(server: Server, token: str) -> list[dict[str, Any]]:
    started = [launch(server, token, "JupyterLab", name=f"load {n}") for n in range(LABS)]
    for lab in started:
        wait_state(server, token, lab["id"], ("running",), timeout=180)
    return [{"id": lab["id"], "url": lab["url"]} for lab in started]


async def run(server: Server, token: str, admin: str, labs: list[dict[str, Any]]) -> tuple[Load, Samples]:
    """The 64 clients (the followers run from launch to their job's end), the churn and the sampler."""
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends (server.keep_alive_s): reusing one the
    # server is closing at that instant is reset, a race of the client, not an error of the server.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as http:
        load, samples = Load(server.url, token, labs, time.monotonic() + SECONDS, http), Samples()
        load.slots = asyncio.Semaphore(MIX["follow"])
        steps = {"list": list_sessions, "single": one_session, "launch": launcher, "proxy": proxied}
        clients = [forever(load, kind, lambda step=step: step(load))  # type: ignore[misc]
                   for kind, step in steps.items() for _ in range(MIX[kind])]
        churn = [forever(load, "session churn", lambda: session_cycle(load)) for _ in range(2)]
        churn += [forever(load, "stop_job", lambda: sleeper_cycle(load)), sampler(load, admin, samples), loop_lag(load)]
        if SNAPSHOTS:  # tracemalloc snapshots of the server (OWB_TRACEMALLOC), for docs/reliability.md's diff
            assert server.proc is not None and frames_wanted(os.environ.get(ENV)), f"{ENV} must be set too"
            churn.append(snapshots(server.proc.pid, snapshot_times(SNAPSHOTS, SECONDS)))
        await asyncio.gather(*clients, *churn)
        await asyncio.gather(*load.following)  # the last jobs' followers, to their jobs' ends
    return load, samples


def check_jobs(server: Server, token: str, load: Load) -> None:
    """Every job launched is recorded as ended as it should, with its exit code; every churned session ended."""
    assert load.followed == set(load.jobs), f"not followed to the end: {sorted(set(load.jobs) - load.followed)}"
    ended = server.rpc("get_historical_session", token, include_jobs=True)
    jobs = {job["id"]: job for job in ended["jobs"]}
    for job_id in load.jobs:
        assert (jobs[job_id]["status"], jobs[job_id]["exitCode"]) == ("Finished", JOB_EXIT), jobs[job_id]
    for job_id in load.stopped:
        assert (jobs[job_id]["status"], jobs[job_id]["exitCode"]) == ("Finished", SLEEPER_EXIT), jobs[job_id]
    sessions = {session["id"]: session for session in ended["sessions"]}
    wrong = [sessions.get(session_id) for session_id in load.sessions
             if sessions.get(session_id, {}).get("activity_state") not in ("finished", "killed")]
    assert wrong == [], f"churned sessions not recorded as stopped: {wrong}"


def report(load: Load, samples: Samples, rows: dict[str, int], settling: tuple[Level, Level, float]) -> dict[str, Any]:
    figures = {
        "seconds": SECONDS, "clients": sum(MIX.values()), "calls": load.tally.summary(),
        "jobs_launched": len(load.jobs), "jobs_stopped": len(load.stopped), "sessions_churned": len(load.sessions),
        "samples": len(samples.times), "slopes_per_min_after_warm_up": samples.slopes(WARM_UP),
        "memory": samples.memory(WARM_UP),
        "series": {name: " ".join(f"{value:.0f}" for value in values) for name, values in samples.series.items()},
        "rows_grown": rows, "baseline": vars(settling[0]), "settled": vars(settling[1]), "settle_s": settling[2],
    }
    print("\nload and soak:", json.dumps(figures, indent=1))
    return figures


@pytest.mark.serial  # a load and its RSS/latency figures: alone, after the parallel phase
@pytest.mark.soak
@pytest.mark.timeout(SECONDS + 420)
def test_load_and_soak(tmp_path: Path, posix_user: pwd.struct_passwd) -> None:
    # Room for the five, the two churning and one stopping while the next starts. An ended job or session
    # leaves get_session's in-memory lists at once (expiry 0, not 1 h): what stays in memory then is a leak.
    extra = "max_per_user = 20\nexpiry_hours = 0\n[jobs]\nexpiry_hours = 0\n"
    with session_server(tmp_path / "data", extra=extra, start_timeout_s=180) as server:
        token, admin = server.token(posix_user.pw_name), server.token(posix_user.pw_name, "admin")
        began = time.monotonic()
        labs = start_labs(server, token)
        print(f"\n{LABS} JupyterLab sessions running after {time.monotonic() - began:.1f} s")
        before, baseline = row_counts(server), Level.now(server, admin)
        load, samples = asyncio.run(run(server, token, admin, labs))
        level, took = settled(server, admin, baseline)
        after = row_counts(server)
        grown = {table: after[table] - before.get(table, 0) for table in after}
        figures = report(load, samples, grown, (baseline, level, took))
        if SNAPSHOTS:
            print("malloc's free memory, trimmed after the load:", json.dumps(trimmed(server)))
        assert load.tally.errors == [], f"{len(load.tally.errors)} errors: {load.tally.errors[:10]}"
        check_jobs(server, token, load)
        assert load.jobs and load.stopped and load.sessions, "the run made no jobs or no sessions"
        # One row per job, per sleeper, per session and per session's own job; nothing else written.
        made = {"jobs": len(load.jobs) + len(load.stopped) + len(load.sessions), "sessions": len(load.sessions),
                "routes": len(load.sessions),  # a session's route row stays with its row
                # Each churned session's moves (launching ... finished), and none of the five that stay running.
                "session_transitions": transitions_of(server, load.sessions)}
        assert made["session_transitions"] >= 4 * len(load.sessions)
        assert grown == {table: made.get(table, 0) for table in after}
        assert level.within(baseline), f"not back to {baseline} after {took} s: {level}"
        assert figures["memory"]["slope_after_warm_up_mb_per_min"] < RSS_SLOPE_MAX_MB_PER_MIN, figures["memory"]
        assert gauges(server, admin)["tasks"] > 0  # the gauge counts (a zero would pass any check above)
