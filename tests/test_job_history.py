"""Jobs at scale (issue 13), on a real server and both databases: the active list and its rotation,
``timestamp`` deltas, ``get_historical_session``, the cached job list, and the retention of output files."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from openworkbench.models import JobSpec
from openworkbench.services.accounts import Accounts
from openworkbench.store import Store
from openworkbench.store.schema import Job, Session, utcnow
from tests.conftest import FINAL, Server, result_of

TINY_EXPIRY = 'expiry_hours = 0.002\n'  # 7.2 s: long enough to see a job Finished, short enough to wait out


@pytest.fixture
def make_server(tmp_path: Path, database_url: str) -> Iterator[Any]:
    servers: list[Server] = []

    def make(config: str = "") -> Server:
        server = Server(tmp_path / "data", database_url=database_url, config_text=config)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def store_of(server: Server) -> Store:
    store = Store(server.database_url)
    store.migrate()
    return store


def launch(server: Server, token: str, command: str) -> str:
    return str(server.rpc("launch_job", token, job={"name": "t", "command": command})["job"]["id"])


def active(server: Server, token: str, **kwparams: Any) -> dict[str, Any]:
    return dict(server.rpc("get_session", token, include_all_jobs=True, **kwparams))


def history(server: Server, token: str, **kwparams: Any) -> dict[str, Any]:
    return dict(server.rpc("get_historical_session", token, **kwparams))


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


# -- rotation ---------------------------------------------------------------------------------------


def test_a_finished_job_rotates_out_after_expiry_hours_and_nothing_is_lost(make_server: Any) -> None:
    server = make_server(f"[jobs]\n{TINY_EXPIRY}").start()
    token = server.token("root", "admin")
    sleeper, done = launch(server, token, "sleep 60"), launch(server, token, "echo kept")
    assert server.wait_job(token, done)["status"] == "Finished"
    before = active(server, token)
    assert {sleeper, done} <= set(ids(before["jobs"]))
    deadline = time.monotonic() + 90
    while done in ids(active(server, token)["jobs"]):
        assert time.monotonic() < deadline, "the finished job never left the active list"
        time.sleep(0.2)
    now = active(server, token)
    assert sleeper in ids(now["jobs"])  # a job still running never rotates out
    # A poller that had the list before learns that the job left, and only that.
    delta = active(server, token, timestamp=before["timestamp"])
    assert delta["removed_job_ids"] == [done]
    assert done not in ids(delta["jobs"])
    # Only moved: the history lists it, its output is still there, stop_job answers as for any ended job.
    assert done in ids(history(server, token, include_jobs=True)["jobs"])
    lines = server.post("get_job_output", token, job_id=done).text
    assert '"output": "kept\\n"' in lines or '"output":"kept\\n"' in lines
    refused = server.post("stop_job", token, job_id=done).json()
    assert refused["error"]["code"] == 4 and "already ended" in refused["error"]["message"]
    server.rpc("stop_job", token, job_id=sleeper, force_quit=True)


def test_expiry_zero_lists_only_jobs_not_yet_final(make_server: Any) -> None:
    server = make_server("[jobs]\nexpiry_hours = 0\n").start()
    token = server.token("root", "admin")
    job_id = launch(server, token, "true")
    deadline = time.monotonic() + 60
    while not history(server, token, include_jobs=True)["jobs"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ids(history(server, token, include_jobs=True)["jobs"]) == [job_id]
    assert active(server, token)["jobs"] == []


# -- timestamp deltas ------------------------------------------------------------------------------------


def test_timestamp_delta_has_changed_and_new_jobs_only(make_server: Any) -> None:
    server = make_server().start()
    token = server.token("root", "admin")
    running, untouched = launch(server, token, "sleep 60"), launch(server, token, "true")
    server.wait_job(token, untouched)
    server.wait_job(token, running, statuses=("Running",))
    first = active(server, token)
    assert isinstance(first["timestamp"], float) and abs(first["timestamp"] - time.time()) < 60
    quiet = active(server, token, timestamp=first["timestamp"])
    assert (quiet["jobs"], quiet["sessions"], quiet["removed_job_ids"], quiet["removed_session_ids"]) == (
        [], [], [], [])
    assert quiet["timestamp"] >= first["timestamp"]
    server.rpc("stop_job", token, job_id=running, force_quit=True)
    stopped = server.wait_job(token, running)
    new = launch(server, token, "true")
    delta = active(server, token, timestamp=first["timestamp"])
    assert set(ids(delta["jobs"])) == {running, new}  # not the job that did not change
    assert next(job for job in delta["jobs"] if job["id"] == running)["status"] == stopped["status"]
    assert delta["removed_job_ids"] == []
    # A bad timestamp is refused by name and changes nothing.
    bad = server.post("get_session", token, timestamp="yesterday")
    assert bad.status_code == 400 and "timestamp" in bad.json()["error"]["message"]


def test_a_cached_job_list_changes_on_the_next_request_after_a_state_change(make_server: Any) -> None:
    server = make_server().start()
    token = server.token("root", "admin")
    job_id = launch(server, token, "sleep 60")
    server.wait_job(token, job_id, statuses=("Running",))
    for _ in range(3):  # answered from memory now
        assert server.job(token, job_id)["status"] == "Running"
    added = launch(server, token, "sleep 60")  # launch_job has answered: the very next list has it
    assert added in ids(active(server, token)["jobs"])
    store = store_of(server)
    server.post("stop_job", token, job_id=job_id, force_quit=True)
    deadline = time.monotonic() + 30
    while (status := store_status(store, job_id)) not in FINAL:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert server.job(token, job_id)["status"] == status  # the first request after the commit sees it
    server.rpc("stop_job", token, job_id=added, force_quit=True)
    store.dispose()


def store_status(store: Store, job_id: str) -> str:
    with store.session() as db:
        return str(db.get(Job, job_id).status)  # type: ignore[union-attr]


# -- history and ended sessions, over rows written into the store -------------------------------------------


def seed_job(db: Any, user_id: int, owner: str, ended: datetime | None, status: str = "Finished") -> str:
    job_id = secrets.token_hex(8)
    spec = JobSpec.model_validate({"name": "seeded", "exe": "/bin/true", "user": owner, "cluster": "Local"})
    begun = (ended or utcnow()) - timedelta(minutes=1)
    db.add(Job(id=job_id, user_id=user_id, cluster="Local", name="seeded", spec=spec.model_dump(mode="json"),
               status=status, status_message="", exit_code=0, host="localhost", stdout_file="", stderr_file="",
               cluster_state={}, submission_time=begun, last_update_time=ended or begun, end_time=ended))
    return job_id


def seed_session(db: Any, user_id: int, owner: str, state: str, when: datetime) -> str:
    session_id = secrets.token_hex(4)
    code = hashlib.sha256(owner.encode()).hexdigest()[:5]
    db.add(Session(id=session_id, user_id=user_id, workbench="JupyterLab", name="s", project_id="21f2ed72",
                   url=f"/s/{code}21f2ed72{session_id}/", state=state, status_detail="", cluster="Local",
                   request={"workbench": "JupyterLab", "launch_parameters": {}}, working_dir="/tmp",
                   socket_path="/tmp/none.sock", state_dir="/tmp/none", secret="x", suspend_manifest={},
                   executing=False, created=when - timedelta(hours=1), last_state_updated=when, last_used=when))
    return session_id


@pytest.fixture
def seeded(make_server: Any) -> tuple[Server, dict[str, Any]]:
    """Two users' ended jobs and sessions at known end times, and one job still pending."""
    server = make_server()
    store = store_of(server)
    accounts = Accounts(store)
    now = utcnow()
    rows: dict[str, Any] = {"now": now}
    with store.session() as db:
        alice, bob = accounts.ensure_user("alice"), accounts.ensure_user("bob")
        rows["a_3d"] = seed_job(db, alice, "alice", now - timedelta(days=3))
        rows["a_1d"] = seed_job(db, alice, "alice", now - timedelta(days=1), status="Failed")
        rows["a_61m"] = seed_job(db, alice, "alice", now - timedelta(minutes=61))  # left the list a minute ago
        rows["a_5m"] = seed_job(db, alice, "alice", now - timedelta(minutes=5))  # still in the list
        rows["b_1d"] = seed_job(db, bob, "bob", now - timedelta(days=1))
        rows["s_2h"] = seed_session(db, alice, "alice", "finished", now - timedelta(hours=2))
        rows["s_10m"] = seed_session(db, alice, "alice", "killed", now - timedelta(minutes=10))
        rows["s_susp"] = seed_session(db, alice, "alice", "suspended", now - timedelta(hours=5))
        rows["s_bob"] = seed_session(db, bob, "bob", "failed", now - timedelta(days=1))
    store.dispose()
    return server.start(), rows


def test_history_filters_on_end_time(seeded: tuple[Server, dict[str, Any]]) -> None:
    server, rows = seeded
    now, alice = rows["now"], server.token("alice")
    everything = history(server, alice, include_jobs=True)
    assert ids(everything["jobs"]) == [rows["a_3d"], rows["a_1d"], rows["a_61m"], rows["a_5m"]]  # oldest end first
    assert ids(everything["sessions"]) == [rows["s_2h"], rows["s_10m"]]  # not the suspended one: it can resume
    assert {job["user"] for job in everything["jobs"]} == {"alice"}
    window = history(server, alice, include_jobs=True, filter_time_begin=iso(now - timedelta(days=1, hours=1)),
                     filter_time_end=iso(now - timedelta(hours=1)))
    assert ids(window["jobs"]) == [rows["a_1d"], rows["a_61m"]]
    assert ids(window["sessions"]) == [rows["s_2h"]]
    assert history(server, alice, filter_time_end=iso(now - timedelta(days=2)))["jobs"] == []  # jobs asked for only
    # Without a zone the time is UTC; an offset is honoured.
    naive = history(server, alice, include_jobs=True, filter_time_begin=(now - timedelta(minutes=30))
                    .replace(tzinfo=None).isoformat())
    assert ids(naive["jobs"]) == [rows["a_5m"]]
    offset = (now - timedelta(minutes=30)).astimezone(datetime.now().astimezone().tzinfo).isoformat()
    assert ids(history(server, alice, include_jobs=True, filter_time_begin=offset)["jobs"]) == [rows["a_5m"]]
    for bad in ("yesterday", "2026-13-01T00:00:00Z", 12):
        response = server.post("get_historical_session", alice, filter_time_begin=bad)
        assert response.status_code == 400, response.text
        assert "filter_time_begin" in response.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["user", "admin-readonly", "admin"])
def test_history_of_all_users_needs_admin_read(seeded: tuple[Server, dict[str, Any]], kind: str) -> None:
    server, rows = seeded
    token = server.token("alice", kind)
    response = server.post("get_historical_session", token, include_all_users=True, include_jobs=True)
    if kind == "user":
        assert response.status_code == 403
        assert response.json()["error"]["code"] == 403
        assert "Permission denied" in response.json()["error"]["message"]
        assert rows["b_1d"] not in response.text
        return
    got = result_of(response)
    assert set(ids(got["jobs"])) == {rows[key] for key in ("a_3d", "a_1d", "a_61m", "a_5m", "b_1d")}
    assert {session["user"] for session in got["sessions"]} == {"alice", "bob"}


def test_ended_sessions_rotate_out_of_the_plain_list(seeded: tuple[Server, dict[str, Any]]) -> None:
    server, rows = seeded
    alice = server.token("alice")
    listed = server.rpc("get_session", alice)
    assert set(ids(listed["sessions"])) == {rows["s_10m"], rows["s_susp"]}
    assert ids(server.rpc("get_session", alice, session_id=rows["s_2h"])["sessions"]) == [rows["s_2h"]]
    # A poller from before the session left is told it left; one from now is told nothing.
    left_at = (rows["now"] - timedelta(hours=1)).timestamp()
    delta = server.rpc("get_session", alice, timestamp=left_at - 1800)
    assert delta["removed_session_ids"] == [rows["s_2h"]]
    quiet = server.rpc("get_session", alice, timestamp=listed["timestamp"])
    assert (quiet["sessions"], quiet["removed_session_ids"]) == ([], [])


def test_jobs_that_left_before_the_server_started_are_found_in_the_store(
        seeded: tuple[Server, dict[str, Any]]) -> None:
    server, rows = seeded
    alice = server.token("alice")
    assert ids(active(server, alice)["jobs"]) == [rows["a_5m"]]
    since = (rows["now"] - timedelta(minutes=3)).timestamp()  # the 61-minute job left two minutes after this
    delta = active(server, alice, timestamp=since)
    assert delta["removed_job_ids"] == [rows["a_61m"]]
    assert ids(delta["jobs"]) == [rows["a_5m"]]  # not changed since the server started: it counts as changed


# -- retention of output files -----------------------------------------------------------------------------


def test_old_output_is_purged_and_get_job_output_says_so(make_server: Any) -> None:
    server = make_server("[jobs]\npurge_interval_s = 0.3\noutput_retention_days = 2\n").start()
    token = server.token("root", "admin")
    old, recent = launch(server, token, "echo old"), launch(server, token, "echo recent")
    old_job, _ = server.wait_job(token, old), server.wait_job(token, recent)
    assert "old" in server.post("get_job_output", token, job_id=old).text
    store = store_of(server)
    with store.transaction() as conn:  # it ended three days ago
        conn.execute(sa.update(Job).where(Job.id == old).values(end_time=utcnow() - timedelta(days=3)))
    deadline = time.monotonic() + 60
    while os.path.exists(old_job["stdoutFile"]):
        assert time.monotonic() < deadline, "the old output was never removed"
        time.sleep(0.1)
    response = server.post("get_job_output", token, job_id=old)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == 4
    assert f"the output of job '{old}' was removed" in error["message"]
    assert "jobs.output_retention_days" in error["message"]
    assert "recent" in server.post("get_job_output", token, job_id=recent).text  # kept
    with store.session() as db:  # the store keeps the row
        row = db.get(Job, old)
        assert row is not None and row.output_purged is not None
    found = history(server, token, include_jobs=True, filter_time_end=iso(utcnow() - timedelta(days=2)))
    assert ids(found["jobs"]) == [old]
    store.dispose()


def test_get_session_always_carries_the_servers_clock(make_server: Any) -> None:
    server = make_server().start()
    token = server.token("root")
    before = time.time()
    plain = server.rpc("get_session", token)
    after = time.time()
    assert before - 1 <= plain["timestamp"] <= after + 1
    assert set(plain) == {"sessions", "timestamp"}
    raw = httpx.post(f"{server.url}/api/get_session", json={"method": "get_session", "kwparams": {}},
                     headers={"Authorization": f"Bearer {token}"})
    assert raw.json()["result"]["timestamp"] >= plain["timestamp"]
    assert datetime.fromtimestamp(plain["timestamp"], UTC).year >= 2026
