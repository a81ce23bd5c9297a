"""Job events: waits and subscriptions fed by the real job monitor with real Local jobs; and a server whose
session starts, session watch and output followers wait on them instead of reading the job again and again."""

from __future__ import annotations

import asyncio
import json
import pwd
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.concurrency import run_in_threadpool

import tests.conftest as conftest
from openworkbench.auth.permissions import Principal
from openworkbench.clusters.base import FINAL_STATUSES
from openworkbench.errors import EventsLost, JobWaitTimeout, NotFound
from openworkbench.models import JobSpec
from openworkbench.services.container import Services
from openworkbench.services.job_events import JobChange
from tests.conftest import Server
from tests.in_process import running_services
from tests.sessions_helpers import launch, session, session_server, wait_state

JUPYTER = Path("/opt/openworkbench/jupyter/bin/jupyter-lab")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """The real services of a server, with its real job monitor, in this process: the hub is at hand."""
    with running_services(tmp_path / "data") as built:
        yield built


def root(services: Services) -> Principal:
    return Principal(services.jobs.owner_id("root"), "root", "user")


def start(services: Services, **job: Any) -> str:
    spec = JobSpec.model_validate({"name": "events", **job})
    return str(services.jobs.launch(root(services), spec)["id"])


def test_wait_returns_on_each_final_state_at_once_when_ended_and_times_out(services: Services) -> None:
    hub = services.jobs.events

    async def scenario() -> None:
        finished = start(services, command="sleep 0.2; exit 3")
        failed = start(services, exe="/no/such/program")
        long = start(services, command="exec sleep 600")
        done = await hub.wait(finished, FINAL_STATUSES, timeout=60)
        assert (done.status, done.exit_code, done.owner, done.cluster) == ("Finished", 3, "root", "Local")
        broken = await hub.wait(failed, FINAL_STATUSES, timeout=60)
        assert broken.status == "Failed" and "/no/such/program" in broken.status_message
        assert (await hub.wait(long, {"Running"}, timeout=60)).status == "Running"
        with pytest.raises(JobWaitTimeout) as timed_out:  # cleanly: the newest state known comes with it
            await hub.wait(long, FINAL_STATUSES, timeout=0.3)
        assert isinstance(timed_out.value.last, JobChange) and timed_out.value.last.status == "Running"
        await run_in_threadpool(services.jobs.stop, root(services), long, True)
        killed = await hub.wait(long, FINAL_STATUSES, timeout=60)
        assert killed.status == "Killed"
        # An ended job: its stored state answers, no event needed; a zero timeout proves no wait happened.
        again = await hub.wait(finished, FINAL_STATUSES, timeout=0)
        assert (again.status, again.exit_code) == ("Finished", 3)
        with pytest.raises(NotFound):
            await hub.wait("no-such-job", FINAL_STATUSES, timeout=5)
        assert hub.subscribers() == 0  # every wait unsubscribed, the failed ones too

    asyncio.run(scenario())


def test_subscribers_get_each_change_once_and_in_order(services: Services) -> None:
    hub = services.jobs.events

    async def scenario() -> dict[str, list[JobChange]]:
        seen: dict[str, list[JobChange]] = {}
        with hub.subscribe(match=lambda change: change.owner == "root") as sub:
            ids = [start(services, command=f"sleep 0.{n}; exit {n}") for n in range(1, 6)]
            while not all(seen.get(job_id) and seen[job_id][-1].final for job_id in ids):
                change = await sub.next(timeout=60)
                seen.setdefault(change.job_id, []).append(change)
            for job_id in ids:  # and nothing after the end
                assert seen[job_id][-1] == await hub.current(job_id)
            assert sub.drain() == []
        return seen

    seen = asyncio.run(scenario())
    for changes in seen.values():
        statuses = [change.status for change in changes]
        assert statuses[0] == "Pending" and statuses[-1] == "Finished", statuses
        assert [status for status in statuses if status in FINAL_STATUSES] == ["Finished"], statuses
        times = [change.time for change in changes]
        assert times == sorted(times) and len(set(times)) == len(times), changes  # in commit order, each once


def test_an_overflowing_subscriber_holds_at_most_its_limit(services: Services) -> None:
    hub = services.jobs.events

    async def scenario() -> None:
        with hub.subscribe(limit=3) as slow, hub.subscribe() as keeping_up:
            ids = [start(services, exe="/bin/true") for _ in range(8)]
            for job_id in ids:
                await hub.wait(job_id, FINAL_STATUSES, timeout=60)
            await asyncio.sleep(0)  # the deliveries scheduled by the last commits
            assert slow.high_water <= 3 < keeping_up.high_water  # 8 jobs made at least 16 changes
            with pytest.raises(EventsLost):
                await slow.next(timeout=5)
            later = start(services, exe="/bin/true")  # after saying so, it goes on
            assert (await slow.next(timeout=60)).job_id == later
            finals = {change.job_id for change in keeping_up.drain() if change.final}
            assert finals >= set(ids)  # the slow one cost the others nothing

    asyncio.run(scenario())


# -- a server: no job JSON polled by session starts, the session watch or output followers --------------------

COUNTER = """
import os, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

counts = open(os.environ["OWB_TEST_JOB_READS"], "a", buffering=1)

@event.listens_for(Engine, "before_cursor_execute")
def count(conn, cursor, statement, *rest):
    # One job's row read by its id (a job's JSON or state): what a poll of the job repeats.
    if "FROM jobs JOIN users" in statement and "WHERE jobs.id = " in statement:
        counts.write("read\\n")

from openworkbench.cli.main import main
sys.argv[0] = "workbench"
main()
"""


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Servers started now run with a counter of single-job reads, by the real engine's statement events."""
    wrapper = tmp_path / "workbench-counted"
    wrapper.write_text(f"#!{sys.executable}\n{COUNTER}")
    wrapper.chmod(0o755)
    reads = tmp_path / "job-reads"
    reads.touch()
    monkeypatch.setattr(conftest, "WORKBENCH", str(wrapper))
    monkeypatch.setenv("OWB_TEST_JOB_READS", str(reads))
    yield reads


def count(reads: Path) -> int:
    return len(reads.read_text().splitlines())


def follow_output(server: Server, token: str, job_id: str) -> list[dict[str, Any]]:
    with server.client.stream("POST", f"{server.url}/api/get_job_output", headers={"Authorization": f"Bearer {token}"},
                              json={"method": "get_job_output", "kwparams": {"job_id": job_id}}) as response:
        return [json.loads(line) for line in response.iter_lines() if line]


@pytest.mark.skipif(not JUPYTER.exists(), reason="IDEs not installed: run scripts/install-ides.sh (make test does)")
def test_session_start_watch_and_followers_do_not_poll_the_job(tmp_path: Path, counted: Path,
                                                               posix_user: pwd.struct_passwd) -> None:
    # A start hook of 2 s: the old start read the hook's job every 100 ms (20 reads), then the IDE's.
    hook = Path(posix_user.pw_dir) / "two-second-hook.sh"
    hook.write_text("#!/bin/sh\nsleep 2\n")
    hook.chmod(0o755)
    with session_server(tmp_path / "data") as server:
        token = server.token(posix_user.pw_name)
        before = count(counted)
        started = launch(server, token, "JupyterLab", start_hooks=[{"exe": str(hook)}])
        running = wait_state(server, token, started["id"], ("running",))
        start_reads = count(counted) - before
        assert start_reads <= 4, start_reads  # the hook's job once, the IDE's once (and a stop's, never here)

        time.sleep(2)  # the watch's rounds (every 0.5 s) read no job of a running session
        assert count(counted) - before == start_reads
        assert session(server, token, started["id"])["activity_state"] == "running"

        # A follower reads its job once, and its stream ends when the job's end event comes.
        job = server.rpc("launch_job", token, job={"name": "followed", "command": "echo a; sleep 1; echo b"})["job"]
        before = count(counted)
        lines = follow_output(server, token, job["id"])
        assert "".join(line["output"] for line in lines) == "a\nb\n"
        assert count(counted) - before == 1
        endless = server.rpc("launch_job", token, job={"name": "endless", "command": "echo go; exec sleep 600"})["job"]
        got: list[list[dict[str, Any]]] = []
        follower = threading.Thread(target=lambda: got.append(follow_output(server, token, endless["id"])))
        follower.start()
        server.wait_job(token, endless["id"], ("Running",))
        server.rpc("stop_job", token, job_id=endless["id"], force_quit=True)
        follower.join(timeout=60)
        assert not follower.is_alive() and got[0][0]["output"] == "go\n"

        # The IDE's job ending is seen from its event: the running session ends without anyone asking.
        assert running["activity_state"] == "running"
        server.rpc("stop_job", token, job_id=ide_job(server, token, started["id"]), force_quit=True)
        ended = wait_state_any(server, token, started["id"], ("failed", "finished"))
        assert ended["activity_state"] == "failed" and "the IDE process ended" in ended["status_detail"]


def ide_job(server: Server, token: str, session_id: str) -> str:
    jobs = server.rpc("get_session", token, session_id=session_id, include_jobs=True)["jobs"]
    return str(next(job["id"] for job in jobs if "session" in job["tags"]))


def wait_state_any(server: Server, token: str, session_id: str, states: tuple[str, ...],
                   timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = session(server, token, session_id)
        if current["activity_state"] in states:
            return current
        time.sleep(0.1)
    raise AssertionError(f"session {session_id} never reached {states}")

