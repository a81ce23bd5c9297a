"""Replicas: two `workbench serve` processes on one PostgreSQL database and one data directory. Each answers the
whole API and proxies any session; one at a time monitors the cluster and watches sessions, and the other takes
over within seconds when it is killed. SQLite refuses a second server."""

from __future__ import annotations

import pwd
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import WORKBENCH, Server, clean_env, make_pg_database
from tests.crash_helpers import Storm, expected_output, output_of, verify_launches
from tests.sessions_helpers import FINAL, kernel_round_trip, launch, session, session_config, wait_state

MONITOR = "monitor:Local"
LATENCY_JOBS = 20  # jobs whose end is timed from the other replica
CONFIG = "[database]\nleader_check_interval_s = 0.5\n"


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    path = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"  # outside pytest's 0700 dirs: the session's user reaches it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def replicas(tmp_path: Path, runtime_dir: Path) -> Iterator[tuple[Server, Server]]:
    """A then B on one fresh PostgreSQL database and one data directory: A starts first and leads every role."""
    url = make_pg_database()
    data = tmp_path / "data"
    config = session_config(runtime_dir, CONFIG)
    a = Server(data, database_url=url, config_text=config, replica="-a").start()
    b = Server(data, database_url=url, config_text=config, replica="-b")
    try:
        b.start()  # on PostgreSQL a second server starts: no serve lock
        yield a, b
    finally:
        b.stop(signal.SIGKILL)
        a.stop(signal.SIGKILL)


def leads(server: Server, admin: str, role: str) -> bool:
    try:
        text = server.client.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    except httpx.TransportError:
        return False
    return re.search(rf'^openworkbench_leader\{{role="{re.escape(role)}"\}} 1\.0$', text, re.M) is not None


def wait_for(check: object, timeout: float, what: str) -> float:
    """Seconds until ``check()`` holds."""
    began = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - began


def test_a_second_server_on_one_sqlite_store_is_refused(fresh_server: Server) -> None:
    server = fresh_server.start()
    second = subprocess.run([WORKBENCH, "serve", "--port", "1", "--data-dir", str(server.data_dir),
                             "--config", str(server.config_file)], capture_output=True, text=True, env=clean_env(),
                            timeout=60)
    assert second.returncode == 1, second
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert lines[0].startswith("workbench: error: the SQLite store ")
    assert str(server.data_dir.resolve() / "workbench.db") in lines[0] and f"pid {server.proc.pid}" in lines[0]  # type: ignore[union-attr]
    token = server.token("root")  # the first one serves on, untouched, its job monitor too
    job = server.rpc("launch_job", token, job={"name": "alone", "command": "echo alone"})["job"]
    assert server.wait_job(token, job["id"])["status"] == "Finished"


def test_jobs_of_each_replica_are_followed_from_the_other(replicas: tuple[Server, Server], tmp_path: Path) -> None:
    a, b = replicas
    token, admin = a.token("root"), a.token("root", "admin")
    assert leads(a, admin, MONITOR) and not leads(b, admin, MONITOR) and leads(a, admin, "sessions")
    storm_a, storm_b = (Storm(server, token, tmp_path / f"ran-{name}") for name, server in (("a", a), ("b", b)))
    for storm in (storm_a, storm_b):
        storm.run(4, 2, threading.Event())
    for storm, other in ((storm_a, b), (storm_b, a)):  # each launch's output, followed live on the other replica
        for item in storm.launches:
            assert item.job_id is not None
            assert output_of(other, token, item.job_id) == expected_output(item.tag)
    for storm in (storm_a, storm_b):
        verify_launches(b, token, storm)
    # From a job's end (its last act: the time) to a follower on the non-monitoring replica seeing the end.
    delays = end_to_follower(b, token, tmp_path, LATENCY_JOBS)
    print(f"\n[replicas] job end -> follower on the other replica, {len(delays)} jobs: median "
          f"{statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms")


def end_to_follower(server: Server, token: str, tmp_path: Path, count: int) -> list[float]:
    """Launch ``count`` jobs on ``server`` (not the monitor) and follow each one's output live there, all at
    once; seconds from each job's last act to its follower's stream ending. A follower that never learns of
    the end fails the test (its read times out)."""
    def follow(index: int) -> float:
        go, ended = tmp_path / f"go-{index}", tmp_path / f"ended-{index}"
        # The job ends only once its follower is subscribed (the stream's headers came): its end is an event.
        command = f"while [ ! -e {go} ]; do sleep 0.05; done; sleep 0.2; date +%s.%N > {ended}"
        job = server.rpc("launch_job", token, job={"name": f"latency-{index}", "command": command})["job"]
        body = {"method": "get_job_output", "kwparams": {"job_id": job["id"]}}
        with httpx.Client(timeout=30) as client, client.stream(
                "POST", f"{server.url}/api/get_job_output", json=body,
                headers={"Authorization": f"Bearer {token}"}) as response:
            go.touch()
            for _ in response.iter_lines():
                pass
        seen = time.time()
        return seen - float(ended.read_text())

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(follow, range(count)))


def test_sigkill_of_the_leader_while_jobs_run_and_launches_go_on(replicas: tuple[Server, Server],
                                                                 tmp_path: Path) -> None:
    a, b = replicas
    token, admin = a.token("root"), a.token("root", "admin")
    assert leads(a, admin, MONITOR)
    storm_a, storm_b = Storm(a, token, tmp_path / "ran-a"), Storm(b, token, tmp_path / "ran-b")
    stop = threading.Event()
    threads = [threading.Thread(target=storm.run, args=(count, 4, stop)) for storm, count in ((storm_a, 400),
                                                                                              (storm_b, 40))]
    for thread in threads:
        thread.start()
    wait_for(lambda: storm_a.replied() >= 10, 60, "launches on A")
    a.stop(signal.SIGKILL)  # mid-storm: some of A's launches are cut, with or without their reply
    took = wait_for(lambda: leads(b, admin, MONITOR) and leads(b, admin, "sessions"), 30, "B takes over")
    print(f"\n[replicas] monitor and session watch taken over by B {took:.2f} s after A was killed")
    for thread in threads:
        thread.join(timeout=120)
    verdict_a = verify_launches(b, token, storm_a)
    verdict_b = verify_launches(b, token, storm_b)
    print(f"[replicas] A: {verdict_a}; B: {verdict_b}")
    assert verdict_b.replied == 40
    assert took < 5, f"B took over {took:.2f} s after A died"  # the brief's bound (interval 0.5 s here)


def test_sessions_across_replicas(replicas: tuple[Server, Server], posix_user: pwd.struct_passwd) -> None:
    """A session launched on A is proxied by B; stop_session on B ends a start running on A; a start that A
    was carrying out when it died is finished by B, which then proxies both."""
    a, b = replicas
    token = a.token(posix_user.pw_name)
    first = launch(a, token, "JupyterLab")
    stopped = launch(a, token, "JupyterLab")
    b.rpc("stop_session", token, session_ids=stopped["id"])  # A is starting it
    wait_state(a, token, first["id"], ("running",))
    assert kernel_round_trip(f"{b.url}{first['url']}", token, "6*7") == "42"  # proxied by the other replica
    wait_for(lambda: session(b, token, stopped["id"])["activity_state"] in FINAL, 90, "the session stopped on B")
    assert session(a, token, stopped["id"])["activity_state"] == "finished"
    # Nothing of the stopped one runs: the start on A gave way, and no IDE job of it is left.
    wait_for(lambda: not live_jobs(b, token, stopped["id"]), 30, "the stopped session's jobs end")
    cut = launch(a, token, "JupyterLab")
    wait_state(b, token, cut["id"], ("pending", "starting"))
    engine = sa.create_engine(a.database_url, poolclass=sa.pool.NullPool)
    replica_of = sa.text("SELECT replica FROM sessions WHERE id = :id")
    with engine.connect() as conn:
        starter = conn.execute(replica_of, {"id": cut["id"]}).scalar()
    a.stop(signal.SIGKILL)  # mid-start: B's session watch takes the start over (FOLLOW_START, as a restart)

    def taken_over() -> bool:
        with engine.connect() as conn:
            return conn.execute(replica_of, {"id": cut["id"]}).scalar() != starter

    took = wait_for(taken_over, 30, "B takes the start over")
    engine.dispose()
    final = wait_state(b, token, cut["id"], ("running",), timeout=120)
    print(f"\n[replicas] a start cut by A's death, taken over by B {took:.2f} s after, finished there: states "
          f"{final['seen_states']}")
    assert final["seen_states"][0] in ("pending", "starting"), final["seen_states"]
    for ident in (first["id"], cut["id"]):  # both served by the survivor alone now
        assert kernel_round_trip(f"{b.url}{session(b, token, ident)['url']}", token, "6*7") == "42"
    assert not live_jobs(b, token, stopped["id"])


def live_jobs(server: Server, token: str, session_id: str) -> list[dict[str, object]]:
    jobs = server.rpc("get_session", token, session_id=session_id, include_jobs=True)["jobs"]
    return [job for job in jobs if job["status"] not in ("Finished", "Failed", "Killed", "Canceled")]
