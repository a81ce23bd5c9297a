"""Crash at the worst moment: SIGKILL of the server in the middle of launch storms and session starts.

Figures go to docs/reliability.md ("Crash at the worst moment"); run with -s to see them.
"""

from __future__ import annotations

import os
import pwd
import random
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Server
from tests.crash_helpers import (
    Storm,
    after_replies,
    kill_when,
    pg_probe,
    sqlite_probe,
    store_check,
    verify_launches,
)
from tests.sessions_helpers import FINAL, kernel_round_trip, launch, session, session_config

# SIGKILLs in the middle of storms, their timing and load: alone, after the parallel phase of `make test`.
pytestmark = pytest.mark.serial

JOBS = 200
CLIENTS = 16
KILL_AFTER = 100  # replies received before the SIGKILL
SESSIONS = 10


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Outside pytest's 0700 temp dirs: the sessions' user must reach it.
    path = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_sessions(server: Server, token: str, ids: list[str], states: tuple[str, ...],
                  timeout: float = 180) -> dict[str, dict[str, Any]]:
    """Each session once it is in one of ``states`` or has ended."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    while len(found) < len(ids):
        for session_id in set(ids) - set(found):
            current = session(server, token, session_id)
            if current["activity_state"] in states or current["activity_state"] in FINAL:
                found[session_id] = current
        assert time.monotonic() < deadline, f"sessions never settled: {set(ids) - set(found)}"
        time.sleep(0.2)
    return found


def until(predicate: Any, timeout: float = 180, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)


def sessions_in_flight(server: Server, token: str, storming: threading.Thread, storm: Storm) -> list[str]:
    """10 sessions caught by the kill in every kind of start: 6 launched just before the storm (launching, pending
    or starting at the kill), one resuming, two suspending."""
    ids = [launch(server, token, "JupyterLab")["id"] for _ in range(4)]
    states = lambda: {i: session(server, token, i)["activity_state"] for i in ids}  # noqa: E731
    until(lambda: sum(state == "running" for state in states().values()) >= 3)
    running = [i for i, state in states().items() if state == "running"]
    server.rpc("stop_session", token, session_ids=running[0], suspend_session=True)
    until(lambda: session(server, token, running[0])["activity_state"] in FINAL)
    server.rpc("resume_session", token, session_id=running[0])
    ids += [launch(server, token, "JupyterLab")["id"] for _ in range(SESSIONS - len(ids))]
    server.rpc("stop_session", token, session_ids=",".join(running[1:3]), suspend_session=True)
    storming.start()  # the kill comes while these are still under way
    until(lambda: storm.replied() >= KILL_AFTER, 120, interval=0.005)
    return ids


def check_sessions(server: Server, token: str, ids: list[str]) -> dict[str, int]:
    """Every session is re-adopted (its URL answers through the proxy, its kernel runs code) or ended with a
    reason; the counts of each outcome."""
    settled = wait_sessions(server, token, ids, ("running",))
    running = [s for s in settled.values() if s["activity_state"] == "running"]
    for item in settled.values():
        if item["activity_state"] in ("failed", "killed"):
            assert item["status_detail"], item
        else:
            assert item["activity_state"] in ("running", "suspended"), item
    with ThreadPoolExecutor(len(running) or 1) as pool:
        answers = list(pool.map(lambda s: kernel_round_trip(server.url + s["url"], token, "6*7", 120), running))
    assert answers == ["42"] * len(running)
    outcome: dict[str, int] = {}
    for item in settled.values():
        outcome[item["activity_state"]] = outcome.get(item["activity_state"], 0) + 1
    return outcome


def stop_sessions(server: Server, token: str, ids: list[str]) -> None:
    live = [i for i in ids if session(server, token, i)["activity_state"] not in FINAL]
    if live:
        server.rpc("stop_session", token, session_ids=",".join(live), force_quit=True)
    suspended = [i for i in ids if session(server, token, i)["activity_state"] == "suspended"]
    if suspended:
        server.rpc("stop_session", token, session_ids=",".join(suspended))
    until(lambda: all(session(server, token, i)["activity_state"] in FINAL[1:] for i in ids), 60)


@pytest.mark.timeout(600)
def test_sigkill_during_a_launch_storm_and_session_starts(
        fresh_server: Server, database_url: str, posix_user: pwd.struct_passwd, runtime_dir: Path,
        tmp_path: Path) -> None:
    began = time.monotonic()
    server = fresh_server
    server.database_url = database_url
    server.start_timeout = 120
    server.config_text = session_config(runtime_dir, "max_per_user = 20\n", start_timeout_s=120)
    server.start()
    root = server.token("root", "super-admin")
    user = server.token(posix_user.pw_name)
    storm = Storm(server, root, tmp_path / "ran")
    stop = threading.Event()
    storming = threading.Thread(target=storm.run, args=(JOBS, CLIENTS, stop))
    ids = sessions_in_flight(server, user, storming, storm)
    server.stop(signal.SIGKILL)
    engine = sa.create_engine(database_url)  # the sessions' states at the kill, as stored
    with engine.connect() as conn:
        before = dict(conn.execute(sa.text("SELECT id, state FROM sessions")).all())
    engine.dispose()
    storming.join()
    replied_before_kill = storm.replied()

    server.start()
    try:
        verdict = verify_launches(server, root, storm, (user,))
        outcome = check_sessions(server, user, ids)
        assert verdict.unreplied_exist + verdict.unreplied_nothing > 0, "the kill came after the storm"
    finally:
        stop_sessions(server, user, ids)
    checked = store_check(server)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    print(f"\n[{database_url.split(':')[0]}] launches {len(storm.launches)} (of {JOBS}), replies before the kill "
          f"{replied_before_kill}, unreplied but sent: {verdict.unreplied_exist} exist, {verdict.unreplied_nothing} "
          f"left nothing; never sent {verdict.never_sent}; sessions at the kill {sorted(before.values())}, after "
          f"{outcome}; {time.monotonic() - began:.0f} s")


KILLS = int(os.environ.get("CRASH_KILLS", "3"))  # per database; make soak: 20


@pytest.mark.timeout(600)
def test_sigkill_inside_a_store_transaction(fresh_server: Server, database_url: str, tmp_path: Path) -> None:
    """Kill-and-restart, again and again, during bursts of launches; aimed at a moment a write transaction of
    the server is open (seen through pg_stat_activity, or SQLite's write lock)."""
    began = time.monotonic()
    rng = random.Random()
    server = fresh_server
    server.database_url = database_url
    server.start_timeout = 120
    server.start()
    root = server.token("root", "super-admin")
    storm = Storm(server, root, tmp_path / "ran")
    sqlite_file = tmp_path / "store.db"
    probe, close = sqlite_probe(sqlite_file) if database_url.startswith("sqlite") else pg_probe(database_url)
    seen: list[str] = []
    try:
        for _ in range(KILLS):
            stop = threading.Event()
            storming = threading.Thread(target=storm.run, args=(60, 8, stop))
            storming.start()
            seen.append(kill_when(server, probe, after_replies(storm, rng), aim_s=2.0))
            stop.set()
            storming.join()
            server.start()  # the next burst meets the restarted server adopting the last one's jobs
            print(f"kill {len(seen)}: {seen[-1] or 'none'}, {len(storm.launches)} launches, "
                  f"{time.monotonic() - began:.1f} s", flush=True)
        verdict = verify_launches(server, root, storm)
    finally:
        close()
    checked = store_check(server)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    print(f"\n[{database_url.split(':')[0]}] kill points {len(seen)}: in a write transaction {seen.count('write')}, "
          f"in a read transaction {seen.count('read')}; launches {len(storm.launches)}, replied {verdict.replied}, "
          f"unreplied: {verdict.unreplied_exist} exist, {verdict.unreplied_nothing} left nothing, never sent "
          f"{verdict.never_sent}; {time.monotonic() - began:.0f} s")


def test_store_check_reports_what_is_broken(fresh_server: Server, database_url: str) -> None:
    """The check can fail: an active job that was never handed to its cluster, and a job in a status the
    server does not know, are both reported, with a non-zero exit."""
    server = fresh_server
    server.database_url = database_url
    server.start_timeout = 120
    server.start()
    server.token("root", "super-admin")
    server.stop(signal.SIGKILL)
    assert store_check(server).returncode == 0
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        user_id = conn.scalar(sa.text("SELECT id FROM users WHERE username = 'root'"))
        for job_id, status in (("lostjob", "Running"), ("oddjob", "Sleeping")):
            conn.execute(sa.text(
                "INSERT INTO jobs (id, user_id, cluster, name, spec, status, status_message, host, stdout_file, "
                "stderr_file, cluster_state, submission_time, last_update_time) VALUES (:id, :u, 'Local', 'x', "
                "'{}', :status, '', '', '', '', '{}', '2020-01-01 00:00:00', '2020-01-01 00:00:00')"),
                {"id": job_id, "u": user_id, "status": status})
    engine.dispose()
    checked = store_check(server, settle_s=60)
    assert checked.returncode == 1, checked.stdout
    assert "1 unfinished jobs were never handed to their cluster: lostjob" in checked.stdout, checked.stdout
    assert "1 jobs have an unknown status: oddjob" in checked.stdout, checked.stdout


def test_a_session_failed_by_a_restart_in_its_launch_leaves_no_job_running(
        fresh_server: Server, posix_user: pwd.struct_passwd, runtime_dir: Path) -> None:
    """The worst moment of a session's launch: its start hook (or its IDE, not yet recorded on the session)
    runs when the server dies. After the restart the session fails with the reason, and that job is stopped."""
    hook = Path(posix_user.pw_dir) / f"endless-hook-{secrets.token_hex(3)}.sh"
    hook.write_text("#!/bin/sh\nexec sleep 600\n")
    hook.chmod(0o755)
    server = fresh_server
    server.config_text = session_config(runtime_dir)
    server.start_timeout = 120
    server.start()
    token = server.token(posix_user.pw_name)
    started = launch(server, token, "JupyterLab", start_hooks=[{"exe": str(hook)}])

    def hook_jobs() -> list[dict[str, Any]]:
        return list(server.rpc("get_session", token, session_id=started["id"], include_jobs=True)["jobs"])

    until(lambda: [job for job in hook_jobs() if job["status"] == "Running"], 60)
    server.stop(signal.SIGKILL)
    server.start()
    assert session(server, token, started["id"])["status_detail"] == "the server restarted while it launched"
    until(lambda: all(job["status"] in ("Killed", "Canceled") for job in hook_jobs()), 60)
    assert store_check(server).returncode == 0


def test_a_resume_cut_short_by_a_restart_resumes_again(
        fresh_server: Server, posix_user: pwd.struct_passwd, runtime_dir: Path) -> None:
    """Killed while a resume runs its start hook: the session still names its last run's (ended) IDE job. After
    the restart the resume starts again (it is not failed as an IDE that ended), and its new IDE job runs."""
    stand_in = runtime_dir.with_name(f"{runtime_dir.name}-ide.sh")  # an IDE that never answers: no JupyterLab
    stand_in.write_text("#!/bin/sh\nexec sleep 600\n")
    stand_in.chmod(0o755)
    gate = Path(posix_user.pw_dir) / f"gate-{secrets.token_hex(3)}"
    hook = Path(posix_user.pw_dir) / f"gated-hook-{secrets.token_hex(3)}.sh"
    hook.write_text(f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n")
    hook.chmod(0o755)
    gate.touch()
    server = fresh_server
    server.config_text = session_config(runtime_dir, f'[ides."JupyterLab"]\nexe = "{stand_in}"\n', 3600)
    server.start_timeout = 120
    server.start()
    token = server.token(posix_user.pw_name)
    started = launch(server, token, "JupyterLab", start_hooks=[{"exe": str(hook)}])

    def jobs(tag: str, status: str) -> list[dict[str, Any]]:
        found = server.rpc("get_session", token, session_id=started["id"], include_jobs=True)["jobs"]
        return [job for job in found if job["tags"] == [tag] and job["status"] == status]

    try:
        until(lambda: jobs("session", "Running"), 60)
        server.rpc("stop_session", token, session_ids=started["id"], suspend_session=True)
        until(lambda: session(server, token, started["id"])["activity_state"] == "suspended", 60)
        gate.unlink()
        server.rpc("resume_session", token, session_id=started["id"])
        until(lambda: jobs("start_hook", "Running"), 60)
        server.stop(signal.SIGKILL)  # the resume is in its start hook: its new IDE job does not exist yet
        server.start()
        until(lambda: len(jobs("start_hook", "Running")) == 1 and len(jobs("start_hook", "Killed")) == 1, 60)
        gate.touch()
        until(lambda: jobs("session", "Running"), 60)
        assert session(server, token, started["id"])["activity_state"] == "resuming"
    finally:
        gate.touch()
        server.rpc("stop_session", token, session_ids=started["id"], force_quit=True)
        until(lambda: session(server, token, started["id"])["activity_state"] in FINAL[1:], 60)
        stand_in.unlink()
    assert store_check(server).returncode == 0
