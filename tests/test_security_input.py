"""Issue 9, attacks 4, 8 and 11 (NUL): input that used to poison the store, run jobs as root, or answer 500.

Each attack is done for real against a real server; each checks that nothing was written and that the server
still answers another user.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from openworkbench.services.run_as import uid_min_of
from openworkbench.store import Store
from openworkbench.store.schema import Job, Session, User, utcnow
from tests.conftest import Server, result_of
from tests.sessions_helpers import launch, session_config, wait_state

ROOT = os.geteuid() == 0
IDES = Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists()
needs_root = pytest.mark.skipif(not ROOT, reason="running jobs as other users needs root")
needs_ides = pytest.mark.skipif(not (ROOT and IDES), reason="needs root and the IDEs (scripts/install-ides.sh)")
# bin (uid 2 on Debian) is the system account the operator allows; root and daemon are not allowed.
AUTH = '[auth]\nallowed_system_users = ["bin"]\n'
CAP = 2


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    runtime = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    config = session_config(runtime, extra=f"max_per_user = {CAP}\n{AUTH}")
    server = Server(tmp_path_factory.mktemp("input") / "data", config_text=config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(srv: Server) -> str:
    """A super-admin with no POSIX account of its own: it can act as anyone the rules allow."""
    return srv.token(f"owbadm{secrets.token_hex(3)}", "super-admin")


@pytest.fixture(scope="module")
def bystander(srv: Server) -> str:
    return srv.token(f"owbby{secrets.token_hex(3)}")


def error_of(response: httpx.Response, status: int, code: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return str(body["error"]["message"])


def jobs_of(server: Server, token: str, user: str | None = None) -> list[dict[str, Any]]:
    return list(server.rpc("get_session", token, include_all_jobs=True, user=user)["jobs"])


def still_serves(server: Server, token: str) -> None:
    """Another user's call is answered normally after the attack."""
    assert "sessions" in server.rpc("get_session", token)


def post_raw(server: Server, method: str, token: str, body: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return server.client.post(f"{server.url}/api/{method}", content=body.encode(), headers=headers)


# -- attack 4: numbers ---------------------------------------------------------------------------------------


def local_maxima(server: Server, token: str) -> dict[str, str]:
    local = server.rpc("get_compute_envs", token)["clusters"][0]
    return {limit["type"]: limit["maxValue"] or "2147483647" for limit in local["resourceLimits"]}


BAD_NUMBERS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1", "0", "-0.0", "lots", ""]


@needs_root
@pytest.mark.parametrize("kind", ["memory", "cpuCount", "cpuTime"])
def test_limits_that_are_not_finite_or_in_range_are_refused(srv: Server, admin: str, bystander: str,
                                                            kind: str) -> None:
    maximum = local_maxima(srv, admin)[kind]
    too_big = {"memory": "999999999", "cpuCount": "4096", "cpuTime": "1e12"}[kind]
    before = jobs_of(srv, admin)
    for value in [*BAD_NUMBERS, too_big]:
        job = {"name": "x", "exe": "/bin/true", "resource_limits": [{"type": kind, "value": value}]}
        message = error_of(srv.post("launch_job", admin, job=job), 200, 1)
        assert f"resource limit {kind}" in message and maximum in message, (value, message)
    # JSON's own NaN and a number that overflows a double: what Python's json module lets through.
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = ('{"method": "launch_job", "kwparams": {"job": {"name": "x", "exe": "/bin/true", '
                f'"resource_limits": [{{"type": "{kind}", "value": {literal}}}]}}}}}}')
        message = error_of(post_raw(srv, "launch_job", admin, body), 200, 1)
        assert f"resource limit {kind} must be a number" in message and maximum in message, (literal, message)
    assert jobs_of(srv, admin) == before  # nothing recorded, not even a Failed job
    still_serves(srv, bystander)


@needs_root
def test_memory_swap_and_non_finite_numbers_elsewhere_are_refused(srv: Server, admin: str, bystander: str) -> None:
    before = jobs_of(srv, admin)
    job = {"name": "x", "exe": "/bin/true", "resource_limits": [{"type": "memorySwap", "value": "nan"}]}
    assert "does not support the memorySwap limit" in error_of(srv.post("launch_job", admin, job=job), 200, 1)
    # A NaN in metadata was stored as is: PostgreSQL refused it (500), SQLite kept it and every later listing of
    # the user's jobs failed to encode it.
    for field in ('"metadata": {"n": NaN}', '"config": [{"x": Infinity}]', '"metadata": {"n": 1e999}'):
        body = f'{{"method": "launch_job", "kwparams": {{"job": {{"name": "x", "exe": "/bin/true", {field}}}}}}}'
        message = error_of(post_raw(srv, "launch_job", admin, body), 400, 400)
        assert "must be a finite number" in message, message
    assert jobs_of(srv, admin) == before
    still_serves(srv, bystander)


@needs_ides
def test_session_limits_are_checked_before_anything_is_recorded(srv: Server, bystander: str,
                                                               posix_user: pwd.struct_passwd) -> None:
    token = srv.token(posix_user.pw_name)
    before = srv.rpc("get_session", token)["sessions"]
    for value in ("nan", "inf", "-4", "999999999"):
        limits = {"resource_limits": [{"type": "memory", "value": value}]}
        response = srv.post("launch_session", token, workbench="JupyterLab", launch_parameters=limits)
        assert "resource limit memory" in error_of(response, 200, 1)
    assert srv.rpc("get_session", token)["sessions"] == before
    still_serves(srv, bystander)


def test_a_submit_failure_of_any_kind_ends_the_job_failed(fresh_server: Server) -> None:
    # The jobs directory is a file: the Local cluster's submit fails with an OSError, not one of ours.
    fresh_server.data_dir.mkdir(parents=True)
    (fresh_server.data_dir / "jobs").write_text("not a directory")
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    response = server.post("launch_job", token, job={"name": "doomed", "exe": "/bin/true"})
    message = error_of(response, 200, 5)
    assert "could not start the job" in message, message
    [job] = jobs_of(server, token)
    assert job["status"] == "Failed" and job["statusMessage"] == message
    still_serves(server, server.token(f"owbby{secrets.token_hex(3)}"))


def insert_bad_rows(database_url: str, owner: str) -> dict[str, str]:
    """What an older version could leave behind, written with SQL while the server is down."""
    store = Store(database_url)
    now = utcnow()
    spec_nan = {"name": "nan", "command": "echo never", "user": owner, "cluster": "Local",
                "resource_limits": [{"type": "memory", "value": "nan"}]}
    spec_inf = {**spec_nan, "name": "inf", "resource_limits": [{"type": "cpuTime", "value": "inf"}]}
    spec_broken = {"name": "broken", "user": owner}  # neither exe nor command: no longer a valid spec
    rows = {"nan": "badbadbadbad0001", "inf": "badbadbadbad0002", "broken": "badbadbadbad0003"}
    specs = {"nan": spec_nan, "inf": spec_inf, "broken": spec_broken}
    with store.engine.begin() as conn:
        user_id = conn.execute(sa.select(User.id).where(User.username == owner)).scalar_one()
        for key, job_id in rows.items():
            conn.execute(sa.insert(Job).values(
                id=job_id, user_id=user_id, cluster="Local", name=key, spec=specs[key],
                status="Running" if key == "broken" else "Pending", status_message="", host="", stdout_file="",
                stderr_file="", cluster_state={}, submission_time=now, last_update_time=now))
        conn.execute(sa.insert(Session).values(
            id="badbad01", user_id=user_id, workbench="NoSuchIDE", name="bad", project_id="00000000",
            url="/s/bad/", state="running", status_detail="", cluster="Local", request={}, working_dir="/",
            socket_path="/nonexistent", state_dir="/nonexistent", secret="x", suspend_manifest={},
            executing=False, created=now, last_state_updated=now, last_used=now))
    store.dispose()
    return {**rows, "session": "badbad01"}


@needs_root
def test_one_bad_row_never_stops_the_server(fresh_server: Server, database_url: str) -> None:
    fresh_server.database_url = database_url  # SQLite and PostgreSQL
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    for value in ("nan", "inf"):  # the attack itself leaves nothing behind...
        job = {"name": "x", "exe": "/bin/true", "resource_limits": [{"type": "cpuTime", "value": value}]}
        error_of(server.post("launch_job", token, job=job), 200, 1)
    assert jobs_of(server, token) == []
    good = server.rpc("launch_job", token, job={"name": "good", "command": "sleep 2; echo survived"})["job"]
    server.wait_job(token, good["id"], ("Running",))
    server.stop(signal.SIGKILL)

    bad = insert_bad_rows(database_url or f"sqlite:///{server.data_dir / 'workbench.db'}", "root")
    server.start()  # ...and what an older version left behind does not stop the start-up
    done = server.wait_job(token, good["id"])
    assert (done["status"], done["exitCode"]) == ("Finished", 0)
    output = httpx.post(f"{server.url}/api/get_job_output", headers={"Authorization": f"Bearer {token}"},
                        json={"method": "get_job_output", "kwparams": {"job_id": good["id"]}}, timeout=60).text
    assert "survived" in "".join(json.loads(line)["output"] for line in output.splitlines())
    for key in ("nan", "inf", "broken"):
        job = server.wait_job(token, bad[key])
        assert job["status"] == "Failed", job
        assert "could not be followed" in job["statusMessage"] or "cannot be followed" in job["statusMessage"], job
    deadline = time.monotonic() + 30
    while (row := server.rpc("get_session", token, session_id=bad["session"])["sessions"][0])["activity_state"] \
            != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert row["activity_state"] == "failed" and "NoSuchIDE" in row["status_detail"], row
    still_serves(server, server.token(f"owbby{secrets.token_hex(3)}"))
    # And a second restart, with every bad row now final, starts as well.
    server.stop()
    server.start()
    still_serves(server, token)


# -- attack 8: root and system accounts -----------------------------------------------------------------------


def test_uid_min_is_read_from_login_defs() -> None:
    assert uid_min_of("") == 1000
    assert uid_min_of("# UID_MIN 5\nUID_MIN\t\t 500\nUID_MAX 60000\n") == 500
    assert uid_min_of("UID_MIN 500 # comment\nUID_MIN 2000\n") == 2000  # the last one wins
    assert uid_min_of("UID_MIN lots\n") == 1000
    assert uid_min_of("SYS_UID_MIN 100\n") == 1000


def usernames(server: Server, token: str) -> set[str]:
    return {user["username"] for user in server.rpc("get_users", token)}


@needs_root
def test_jobs_never_run_as_root_or_a_system_account(srv: Server, admin: str, bystander: str) -> None:
    before = jobs_of(srv, admin)
    for user, rule in (("root", "is root (uid 0)"), ("daemon", "is a system account (uid 1, below UID_MIN")):
        response = srv.post("launch_job", admin, job={"name": "x", "command": "id", "user": user})
        message = error_of(response, 403, 403)
        assert f"user '{user}' {rule}" in message and "auth.allowed_system_users" in message, message
        response = srv.post("launch_session", admin, workbench="JupyterLab", username=user)
        assert f"user '{user}' {rule}" in error_of(response, 403, 403)
    assert not {"root", "daemon"} & usernames(srv, admin)  # never registered as Workbench users
    assert jobs_of(srv, admin) == before
    # A token made for root itself (the operator may make one) cannot run anything as uid 0 either.
    root = srv.token("root", "super-admin")
    assert "user 'root' is root (uid 0)" in error_of(srv.post("launch_job", root, job={"name": "x", "exe": "/bin/id"}),
                                                     403, 403)
    assert jobs_of(srv, root) == []
    still_serves(srv, bystander)


@needs_root
def test_an_allowed_system_account_runs_jobs(srv: Server, admin: str) -> None:
    job = srv.rpc("launch_job", admin, job={"name": "as bin", "command": "id -u", "user": "bin"})["job"]
    done = srv.wait_job(admin, job["id"], user="bin")
    assert (done["status"], done["exitCode"], done["user"]) == ("Finished", 0, "bin")
    output = srv.client.post(f"{srv.url}/api/get_job_output", headers={"Authorization": f"Bearer {admin}"},
                             json={"method": "get_job_output", "kwparams": {"job_id": job["id"]}}).text
    assert [json.loads(line)["output"] for line in output.splitlines()] == [f"{pwd.getpwnam('bin').pw_uid}\n"]


# -- attack 11: NUL and other control characters --------------------------------------------------------------


def nul_attacks(user: str) -> list[tuple[str, dict[str, Any], str]]:
    """(method, kwparams, the parameter the message must name)."""
    job = {"name": "x", "exe": "/bin/true"}
    return [
        ("launch_job", {"job": {**job, "user": "ro\0ot"}}, "kwparams.job.user"),
        ("launch_job", {"job": {**job, "user": "root\n"}}, "kwparams.job.user"),
        ("launch_job", {"job": {**job, "name": "a\0b"}}, "kwparams.job.name"),
        ("launch_job", {"job": {**job, "exe": "/bin/true\0x"}}, "kwparams.job.exe"),
        ("launch_job", {"job": {**job, "args": ["a\0b"]}}, "kwparams.job.args"),
        ("launch_job", {"job": {"name": "x", "command": "echo \0"}}, "kwparams.job.command"),
        ("launch_job", {"job": {**job, "working_directory": "/tmp\0"}}, "kwparams.job.working_directory"),
        ("launch_job", {"job": {**job, "environment": {"A\0": "b"}}}, "kwparams.job.environment.0.name"),
        ("launch_job", {"job": {**job, "environment": {"A=B": "b"}}}, "kwparams.job.environment.0.name"),
        ("launch_job", {"job": {**job, "environment": [{"name": "A", "value": "b\0"}]}},
         "kwparams.job.environment.0.value"),
        ("launch_job", {"job": {**job, "stdin": "\0"}}, "kwparams.job.stdin"),
        ("launch_job", {"job": {**job, "tags": ["\x1b[31m"]}}, "kwparams.job.tags"),
        ("launch_job", {"job": {**job, "metadata": {"k\0": 1}}}, "kwparams.job.metadata"),
        ("launch_session", {"workbench": "JupyterLab", "username": f"{user}\0"}, "kwparams.username"),
        ("launch_session", {"workbench": "JupyterLab", "name": "n\0"}, "kwparams.name"),
        ("launch_session", {"workbench": "JupyterLab", "open_file": "/etc/passwd\0"}, "kwparams.open_file"),
        ("launch_session", {"workbench": "JupyterLab", "working_directory": "~\0"}, "kwparams.working_directory"),
        ("launch_session", {"workbench": "JupyterLab", "environment": {"X": "\0"}}, "kwparams.environment"),
        ("launch_session", {"workbench": "JupyterLab", "start_hooks": [{"exe": "/bin/true\0"}]},
         "kwparams.start_hooks"),
        ("resume_session", {"session_id": "abcd", "username": "\0"}, "kwparams.username"),
        ("get_session", {"user": "ro\0ot"}, "kwparams.user"),
        ("get_session", {"session_id": "a\0b"}, "kwparams.session_id"),
        ("get_job_output", {"job_id": "a\0"}, "kwparams.job_id"),
        ("stop_job", {"job_id": "a\0"}, "kwparams.job_id"),
        ("stop_session", {"session_ids": "a\0"}, "kwparams.session_ids"),
        ("get_compute_envs", {"user": "\0"}, "kwparams.user"),
    ]


def test_nul_and_control_characters_are_a_400_never_a_500(fresh_server: Server, database_url: str) -> None:
    fresh_server.database_url = database_url  # PostgreSQL refuses NUL in text: it used to be a 500 there
    server = fresh_server.start()
    admin = server.token(f"owbadm{secrets.token_hex(3)}", "super-admin")
    before = jobs_of(server, admin)
    for method, kwparams, where in nul_attacks("someone"):
        message = error_of(server.post(method, admin, **kwparams), 400, 400)
        assert f"invalid '{where}" in message and ("NUL" in message or "control" in message
                                                   or "environment variable name" in message), message
    assert jobs_of(server, admin) == before and server.rpc("get_session", admin)["sessions"] == []
    assert len(server.rpc("get_users", admin)) == 1  # nobody was registered on the way
    # The proxy looks session URLs up in the store too.
    proxied = server.client.get(f"{server.url}/s/ab%00cd/", headers={"Authorization": f"Bearer {admin}"})
    assert proxied.status_code == 404, proxied.text
    still_serves(server, server.token(f"owbby{secrets.token_hex(3)}"))


def test_newlines_and_tabs_stay_allowed_where_text_is_free(srv: Server, admin: str) -> None:
    if not ROOT:
        pytest.skip("runs a job as bin")
    job = {"name": "multi", "command": "printf '%s|%s' \"$1\" \"$V\"", "args": ["x", "a\tb"], "user": "bin",
           "environment": {"V": "line1\nline2"}}
    launched = result_of(srv.post("launch_job", admin, job=job))["job"]
    done = srv.wait_job(admin, launched["id"], user="bin")
    assert (done["status"], done["exitCode"]) == ("Finished", 0)


# -- the per-user cap on sessions ------------------------------------------------------------------------------


@needs_ides
def test_sessions_beyond_the_per_user_cap_are_refused(srv: Server, bystander: str,
                                                      posix_user: pwd.struct_passwd) -> None:
    token = srv.token(posix_user.pw_name)
    live = [s for s in srv.rpc("get_session", token)["sessions"] if s["activity_state"] not in
            ("suspended", "failed", "killed", "finished", "canceled")]
    assert live == []
    first, second = (launch(srv, token, "JupyterLab", name=f"s{i}") for i in range(CAP))
    refused = srv.post("launch_session", token, workbench="JupyterLab", name="third")
    message = error_of(refused, 200, 8)
    assert message == (f"user '{posix_user.pw_name}' already has {CAP} sessions that have not ended, the most "
                       f"sessions.max_per_user allows ({CAP}): stop or suspend one first")
    assert len(srv.rpc("get_session", token)["sessions"]) == CAP  # the refused one was not recorded
    still_serves(srv, bystander)

    # A suspended session does not count; resuming it counts again.
    wait_state(srv, token, first["id"], ("running",))
    srv.rpc("stop_session", token, session_ids=first["id"], suspend_session=True)
    wait_state(srv, token, first["id"], ("suspended",))
    third = launch(srv, token, "JupyterLab", name="third")
    resumed = srv.post("resume_session", token, session_id=first["id"])
    assert "sessions.max_per_user" in error_of(resumed, 200, 8)
    assert srv.rpc("get_session", token, session_id=first["id"])["sessions"][0]["activity_state"] == "suspended"
    srv.rpc("stop_session", token, session_ids=",".join([first["id"], second["id"], third["id"]]), force_quit=True)
    for session_id in (second["id"], third["id"]):
        wait_state(srv, token, session_id, ("killed", "failed", "finished"))
