"""The permission matrix: token kind x method x own/other, against a real server, driven by one table.

Every caller is a real POSIX account, so "launch_job own" really runs a process as the caller, and
the "other" user is one too, so a super-admin really launches as them and the job runs with their uid.
The pure policy (Principal.from_standing, permissions.allowed) is checked as a table as well.
"""

from __future__ import annotations

import contextlib
import json
import pwd
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from openworkbench.auth.permissions import Action, Principal, allowed
from openworkbench.store.schema import User
from tests.conftest import Server, remove_posix_user, result_of
from tests.sessions_helpers import session_server

KINDS = ("user", "admin-readonly", "admin", "super-admin-readonly", "super-admin")
EVERYONE = frozenset(KINDS)
READERS = frozenset({"admin-readonly", "admin", "super-admin-readonly", "super-admin"})
WRITERS = frozenset({"admin", "super-admin"})
ACTORS = frozenset({"super-admin"})
FINAL = ("Finished", "Failed", "Killed", "Canceled")

# (method, whose resource) -> the token kinds that may do it. Everything else is HTTP 403.
MATRIX: dict[tuple[str, str], frozenset[str]] = {
    ("version", "own"): EVERYONE,
    ("get_users", "own"): READERS,  # listing users is an admin read, even for oneself
    ("get_compute_envs", "own"): EVERYONE,
    ("get_compute_envs", "other"): READERS,
    ("get_session", "own"): EVERYONE,
    ("get_session", "other"): READERS,
    ("get_job_output", "own"): EVERYONE,
    ("get_job_output", "other"): READERS,
    ("stop_job", "own"): EVERYONE,
    ("stop_job", "other"): WRITERS,
    ("launch_job", "own"): EVERYONE,
    ("launch_job", "other"): ACTORS,
    ("launch_session", "own"): EVERYONE,  # `username` names the owner
    ("launch_session", "other"): ACTORS,
    ("resume_session", "own"): EVERYONE,
    ("resume_session", "other"): ACTORS,
    ("stop_session", "own"): EVERYONE,
    ("stop_session", "other"): WRITERS,
    ("get_historical_session", "own"): EVERYONE,
    ("get_historical_session", "other"): READERS,  # include_all_users
}
SESSION_FINAL = ("suspended", "failed", "killed", "finished", "canceled")
CASES = [
    pytest.param(kind, method, whose, kind in kinds, id=f"{kind}-{method}-{whose}")
    for (method, whose), kinds in MATRIX.items()
    for kind in KINDS
]


# -- the world: a server, one POSIX caller per kind, another POSIX user, and their jobs ------------------


@dataclass
class Caller:
    kind: str
    username: str
    uid: int
    token: str
    done_job: str = ""  # a finished job of the caller's own, with known output


@dataclass
class World:
    server: Server
    callers: dict[str, Caller]
    other: str
    other_uid: int
    other_token: str
    other_done_job: str = ""
    other_running_job: str = ""
    started: list[tuple[str, str]] = field(default_factory=list)  # (job id, owner) of every sleeper
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (session id, owner) of every session

    @property
    def admin(self) -> str:
        """The super-admin token: reads and stops anything, launches as anyone."""
        return self.callers["super-admin"].token


def post(server: Server, method: str, token: str, **kwparams: Any) -> httpx.Response:
    response = server.post(method, token, **kwparams)
    assert "Traceback" not in response.text
    return response


ok = result_of


def denied(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == 403, body
    assert "Permission denied" in body["error"]["message"]
    return str(body["error"]["message"])


def jobs_of(world: World, owner: str) -> dict[str, dict[str, Any]]:
    jobs = ok(post(world.server, "get_session", world.admin, user=owner, include_all_jobs=True))["jobs"]
    return {job["id"]: job for job in jobs}


def wait_status(
    world: World, job_id: str, owner: str, statuses: tuple[str, ...], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = jobs_of(world, owner)[job_id]
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def stdout_of(server: Server, token: str, job_id: str) -> str:
    response = post(server, "get_job_output", token, job_id=job_id)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    chunks = [json.loads(line) for line in response.text.splitlines()]
    assert all(chunk["jobId"] == job_id for chunk in chunks)
    assert not [chunk for chunk in chunks if "error" in chunk]
    return "".join(chunk["output"] for chunk in chunks if chunk["outputType"] == "stdout")


def launch(world: World, token: str, command: str, user: str | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {"name": "perm", "command": command}
    if user is not None:
        job["user"] = user
    launched: dict[str, Any] = ok(post(world.server, "launch_job", token, job=job))["job"]
    return launched


def sleeper(world: World, owner: str, token: str | None = None) -> str:
    """A long-running job of ``owner``, Running when this returns; stopped at the end of the module."""
    # 600 s, not 30: the module's tests ran past 30 s beside make test's other workers on a loaded machine.
    job = launch(world, token or world.admin, "sleep 600", user=owner)
    world.started.append((job["id"], owner))
    wait_status(world, job["id"], owner, ("Running",))
    return str(job["id"])


def sessions_of(world: World, owner: str) -> dict[str, dict[str, Any]]:
    sessions = ok(post(world.server, "get_session", world.admin, user=owner))["sessions"]
    return {session["id"]: session for session in sessions}


def wait_session(world: World, owner: str, session_id: str, states: tuple[str, ...],
                 timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    session: dict[str, Any] = {}
    while time.monotonic() < deadline:
        session = sessions_of(world, owner)[session_id]
        if session["activity_state"] in states:
            return session
        time.sleep(0.1)
    raise AssertionError(f"session {session_id} never reached {states}: {session}")


def new_session(world: World, owner: str, suspended: bool = False) -> str:
    """A session of ``owner`` (launched by the super-admin), `starting`, or `suspended` if asked."""
    session_id = str(ok(post(world.server, "launch_session", world.admin, workbench="JupyterLab",
                             username=owner))["id"])
    world.sessions.append((session_id, owner))
    wait_session(world, owner, session_id, ("starting",))
    if suspended:
        ok(post(world.server, "stop_session", world.admin, session_ids=session_id, suspend_session=True))
        wait_session(world, owner, session_id, ("suspended",))
    return session_id


@contextlib.contextmanager
def posix_accounts(count: int) -> Iterator[list[pwd.struct_passwd]]:
    """``count`` fresh unprivileged POSIX users with home directories, removed afterwards."""
    names: list[str] = []
    try:
        for _ in range(count):
            name = f"owbp{secrets.token_hex(3)}"
            home = f"/tmp/owb-home-{name}"
            subprocess.run(["useradd", "--create-home", "--home-dir", home, "--shell", "/bin/sh", name], check=True)
            names.append(name)
        yield [pwd.getpwnam(name) for name in names]
    finally:
        for name in names:
            remove_posix_user(name)
            shutil.rmtree(f"/tmp/owb-home-{name}", ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose JupyterLab is a stand-in that never answers: its sessions stay `starting`, cheaply, for as
    long as the checks need (who may launch, resume or stop a session does not depend on the IDE)."""
    stand_in = Path("/tmp") / f"owb-stand-in-ide-{secrets.token_hex(3)}.sh"
    stand_in.write_text("#!/bin/sh\nexec sleep 600\n")
    stand_in.chmod(0o755)
    try:
        # Its sessions hold their start slots for good: enough slots that none waits in the start queue.
        with session_server(tmp_path_factory.mktemp("perm") / "data",
                            f'max_concurrent_starts = 100\n[ides."JupyterLab"]\nexe = "{stand_in}"\n',
                            start_timeout_s=3600) as srv:
            yield srv
    finally:
        stand_in.unlink()


@pytest.fixture(scope="module")
def world(server: Server, posix_user: pwd.struct_passwd) -> Iterator[World]:
    with posix_accounts(len(KINDS) - 1) as accounts:
        callers = {"user": Caller("user", "root", 0, server.token("root", "user"))}
        for kind, account in zip(KINDS[1:], accounts, strict=True):
            callers[kind] = Caller(kind, account.pw_name, account.pw_uid, server.token(account.pw_name, kind))
        other = posix_user.pw_name
        w = World(server, callers, other, posix_user.pw_uid, server.token(other, "user"))
        # Finished jobs with known output: one of the other user (launched for them), one per caller.
        w.other_done_job = launch(w, w.admin, "id -u; echo other-secret", user=other)["id"]
        for caller in callers.values():
            caller.done_job = launch(w, caller.token, f"id -u; echo own-{caller.kind}")["id"]
        w.other_running_job = sleeper(w, other)
        wait_status(w, w.other_done_job, other, ("Finished",))
        for caller in callers.values():
            done = wait_status(w, caller.done_job, caller.username, ("Finished",))
            assert done["exitCode"] == 0, done
        try:
            yield w
        finally:
            for session_id, owner in w.sessions:
                if sessions_of(w, owner)[session_id]["activity_state"] not in SESSION_FINAL:
                    post(server, "stop_session", w.admin, session_ids=session_id, force_quit=True)
            for session_id, owner in w.sessions:
                wait_session(w, owner, session_id, SESSION_FINAL)
            for job_id, owner in w.started:
                if jobs_of(w, owner)[job_id]["status"] not in FINAL:
                    post(server, "stop_job", w.admin, job_id=job_id, force_quit=True)
            for job_id, owner in w.started:
                wait_status(w, job_id, owner, FINAL)


# -- the matrix ---------------------------------------------------------------------------------------


def check_version(world: World, caller: Caller, whose: str, expected: bool) -> None:
    body = post(world.server, "version", caller.token).json()
    assert body["result"]["version"] == body["version"]


def check_get_users(world: World, caller: Caller, whose: str, expected: bool) -> None:
    response = post(world.server, "get_users", caller.token)
    if not expected:
        denied(response)
        return
    users = {user["username"]: user for user in ok(response)}
    assert users[world.other]["uid"] == world.other_uid
    assert users[world.other]["isAdmin"] is False
    assert users[caller.username]["uid"] == caller.uid
    assert users[caller.username]["isAdmin"] is True
    assert users[caller.username]["isSuperAdmin"] is caller.kind.startswith("super-admin")


def target(world: World, caller: Caller, whose: str) -> str:
    return caller.username if whose == "own" else world.other


def check_get_compute_envs(world: World, caller: Caller, whose: str, expected: bool) -> None:
    response = post(world.server, "get_compute_envs", caller.token, user=target(world, caller, whose))
    if not expected:
        assert world.other in denied(response)
        return
    envs = ok(response)
    assert [cluster["name"] for cluster in envs["clusters"]] == ["Local"]
    assert set(envs["workbenches"]) == {"RStudio", "JupyterLab", "Jupyter Notebook", "VS Code"}


def check_get_session(world: World, caller: Caller, whose: str, expected: bool) -> None:
    owner = target(world, caller, whose)
    response = post(world.server, "get_session", caller.token, user=owner, include_all_jobs=True)
    if not expected:
        assert world.other in denied(response)
        return
    got = ok(response)
    assert got["sessions"] == []
    assert got["jobs"] and {job["user"] for job in got["jobs"]} == {owner}
    ids = {job["id"] for job in got["jobs"]}
    assert (caller.done_job if whose == "own" else world.other_done_job) in ids
    if whose == "other":
        assert world.other_running_job in ids


def check_get_job_output(world: World, caller: Caller, whose: str, expected: bool) -> None:
    job_id = caller.done_job if whose == "own" else world.other_done_job
    if not expected:
        response = post(world.server, "get_job_output", caller.token, job_id=job_id)
        assert response.headers["content-type"].startswith("application/json")
        assert "other-secret" not in response.text
        denied(response)
        return
    text = stdout_of(world.server, caller.token, job_id)
    if whose == "own":
        assert text == f"{caller.uid}\nown-{caller.kind}\n"
    else:
        assert text == f"{world.other_uid}\nother-secret\n"


def check_stop_job(world: World, caller: Caller, whose: str, expected: bool) -> None:
    if whose == "own":
        owner, job_id = caller.username, sleeper(world, caller.username, token=caller.token)
    else:
        # A fresh job to stop when the stop must work; the shared one when it must not.
        owner, job_id = world.other, sleeper(world, world.other) if expected else world.other_running_job
    response = post(world.server, "stop_job", caller.token, job_id=job_id)
    if not expected:
        assert world.other in denied(response)
        time.sleep(0.3)
        assert jobs_of(world, owner)[job_id]["status"] == "Running"
        return
    assert ok(response) == {}
    ended = wait_status(world, job_id, owner, FINAL, timeout=10)
    assert ended["status"] == "Finished", ended  # SIGTERM, not SIGKILL: a non-zero exit is still Finished
    assert ended["exitCode"] == 143 or "SIGTERM" in ended["statusMessage"], ended


def check_launch_job(world: World, caller: Caller, whose: str, expected: bool) -> None:
    if whose == "own":
        # Naming oneself as job.user is "own" too (the fixture's jobs cover leaving it out).
        launched = launch(world, caller.token, "id -u", user=caller.username)
        assert launched["user"] == caller.username
        done = wait_status(world, launched["id"], caller.username, FINAL)
        assert (done["status"], done["exitCode"]) == ("Finished", 0), done
        assert stdout_of(world.server, caller.token, launched["id"]) == f"{caller.uid}\n"
        return
    before = set(jobs_of(world, world.other))
    response = post(world.server, "launch_job", caller.token,
                    job={"name": "as-other", "command": "id -u", "user": world.other})
    if not expected:
        assert world.other in denied(response)
        assert set(jobs_of(world, world.other)) == before
        return
    launched = ok(response)["job"]
    assert launched["user"] == world.other
    done = wait_status(world, launched["id"], world.other, FINAL)
    assert (done["status"], done["exitCode"]) == ("Finished", 0), done
    # The job really ran as the other user's uid, not as root nor as the caller.
    assert stdout_of(world.server, caller.token, launched["id"]) == f"{world.other_uid}\n"
    assert stdout_of(world.server, world.other_token, launched["id"]) == f"{world.other_uid}\n"


def check_launch_session(world: World, caller: Caller, whose: str, expected: bool) -> None:
    owner = target(world, caller, whose)
    before = set(sessions_of(world, owner))
    response = post(world.server, "launch_session", caller.token, workbench="JupyterLab", username=owner)
    if not expected:
        assert owner in denied(response)
        assert set(sessions_of(world, owner)) == before
        return
    session_id = ok(response)["id"]
    world.sessions.append((session_id, owner))
    wait_session(world, owner, session_id, ("starting",))
    jobs = ok(post(world.server, "get_session", world.admin, user=owner, session_id=session_id,
                   include_jobs=True))["jobs"]
    assert jobs and {job["user"] for job in jobs} == {owner}  # the IDE's job runs as the owner


def check_resume_session(world: World, caller: Caller, whose: str, expected: bool) -> None:
    owner = target(world, caller, whose)
    session_id = new_session(world, owner, suspended=True)
    response = post(world.server, "resume_session", caller.token, session_id=session_id, username=owner)
    if not expected:
        assert owner in denied(response)
        assert sessions_of(world, owner)[session_id]["activity_state"] == "suspended"
        return
    assert ok(response)["id"] == session_id
    assert sessions_of(world, owner)[session_id]["activity_state"] == "resuming"


def check_stop_session(world: World, caller: Caller, whose: str, expected: bool) -> None:
    owner = target(world, caller, whose)
    session_id = new_session(world, owner)
    response = post(world.server, "stop_session", caller.token, session_ids=session_id)
    if not expected:
        assert owner in denied(response)
        assert sessions_of(world, owner)[session_id]["activity_state"] == "starting"
        return
    assert ok(response) == {}
    assert wait_session(world, owner, session_id, SESSION_FINAL)["activity_state"] == "finished"
def check_get_historical_session(world: World, caller: Caller, whose: str, expected: bool) -> None:
    response = post(world.server, "get_historical_session", caller.token, include_jobs=True,
                    include_all_users=whose == "other")
    if not expected:
        assert "include_all_users" in denied(response)
        assert world.other_done_job not in response.text
        return
    ids = {job["id"] for job in ok(response)["jobs"]}
    assert caller.done_job in ids
    assert (world.other_done_job in ids) is (whose == "other")


CHECKS: dict[str, Callable[[World, Caller, str, bool], None]] = {
    "version": check_version,
    "get_users": check_get_users,
    "get_compute_envs": check_get_compute_envs,
    "get_session": check_get_session,
    "get_job_output": check_get_job_output,
    "stop_job": check_stop_job,
    "launch_job": check_launch_job,
    "launch_session": check_launch_session,
    "resume_session": check_resume_session,
    "stop_session": check_stop_session,
    "get_historical_session": check_get_historical_session,
}


def test_the_matrix_covers_every_kind_and_method() -> None:
    assert {method for method, _ in MATRIX} == set(CHECKS)
    assert len(CASES) == len(KINDS) * len(MATRIX)


@pytest.mark.parametrize(("kind", "method", "whose", "expected"), CASES)
def test_permission_matrix(world: World, kind: str, method: str, whose: str, expected: bool) -> None:
    CHECKS[method](world, world.callers[kind], whose, expected)


# -- standing caps the token's kind ------------------------------------------------------------------


def set_standing(server: Server, username: str, *, admin: bool, super_admin: bool) -> None:
    with server.accounts().store.session() as db:
        db.execute(update(User).where(User.username == username).values(is_admin=admin, is_super_admin=super_admin))


def test_user_token_of_a_super_admin_is_still_a_user_token(world: World) -> None:
    boss = world.callers["super-admin"]
    token = world.server.token(boss.username, "user")
    denied(post(world.server, "get_users", token))
    denied(post(world.server, "get_session", token, user=world.other))
    denied(post(world.server, "get_job_output", token, job_id=world.other_done_job))
    denied(post(world.server, "stop_job", token, job_id=world.other_running_job))
    denied(post(world.server, "launch_job", token, job={"name": "x", "command": "true", "user": world.other}))
    assert boss.done_job in {job["id"] for job in ok(post(world.server, "get_session", token, include_all_jobs=True))
                             ["jobs"]}


def test_admin_token_of_a_demoted_user_acts_as_a_user_token(world: World) -> None:
    name = f"demoted{secrets.token_hex(3)}"
    token = world.server.token(name, "admin")
    ok(post(world.server, "get_users", token))
    ok(post(world.server, "get_session", token, user=world.other))
    set_standing(world.server, name, admin=False, super_admin=False)
    # Effective on the very next request.
    denied(post(world.server, "get_users", token))
    denied(post(world.server, "get_session", token, user=world.other))
    denied(post(world.server, "get_job_output", token, job_id=world.other_done_job))
    denied(post(world.server, "stop_job", token, job_id=world.other_running_job))
    own = ok(post(world.server, "get_session", token, include_all_jobs=True))
    assert (own["sessions"], own["jobs"]) == ([], [])
    ok(post(world.server, "get_compute_envs", token))
    assert jobs_of(world, world.other)[world.other_running_job]["status"] == "Running"


def test_super_admin_token_of_a_demoted_user_is_capped_step_by_step(world: World) -> None:
    name = f"demoted{secrets.token_hex(3)}"
    write, read = world.server.token(name, "super-admin"), world.server.token(name, "super-admin-readonly")
    launch_as_other = {"job": {"name": "x", "command": "true", "user": world.other}}
    before = set(jobs_of(world, world.other))
    set_standing(world.server, name, admin=True, super_admin=False)
    # super-admin -> admin: reads and writes others, may no longer act on their behalf.
    assert world.other in denied(post(world.server, "launch_job", write, **launch_as_other))
    ok(post(world.server, "get_users", write))
    ok(post(world.server, "get_session", write, user=world.other))
    # super-admin-readonly -> admin-readonly: reads others, still no writes.
    ok(post(world.server, "get_session", read, user=world.other))
    denied(post(world.server, "stop_job", read, job_id=world.other_running_job))
    denied(post(world.server, "launch_job", read, **launch_as_other))
    set_standing(world.server, name, admin=False, super_admin=False)
    for token in (write, read):
        denied(post(world.server, "get_users", token))
        denied(post(world.server, "get_session", token, user=world.other))
    assert set(jobs_of(world, world.other)) == before


def test_get_job_output_user_must_be_the_jobs_owner(world: World) -> None:
    reader = world.callers["admin-readonly"].token
    assert stdout_of(world.server, reader, world.other_done_job).endswith("other-secret\n")
    response = post(world.server, "get_job_output", reader, job_id=world.other_done_job, user=world.other)
    assert response.status_code == 200 and "other-secret" in response.text
    response = post(world.server, "get_job_output", reader, job_id=world.other_done_job, user="root")
    assert response.status_code == 200 and response.json()["error"]["code"] == 2


def test_launch_for_a_disabled_user_is_refused(world: World) -> None:
    with posix_accounts(1) as (account,):
        world.server.token(account.pw_name, "user")
        world.server.accounts().disable_user(account.pw_name)
        response = post(world.server, "launch_job", world.admin,
                        job={"name": "x", "command": "true", "user": account.pw_name})
        assert response.status_code == 200, response.text
        err = response.json()["error"]
        assert err["code"] == 1 and "disabled" in err["message"] and account.pw_name in err["message"]
        assert jobs_of(world, account.pw_name) == {}


# -- what the session methods promise besides permissions (docs/api.md) ---------------------------------------


def test_get_session_answers_a_get(world: World) -> None:
    session_id = new_session(world, world.other)
    headers = {"Authorization": f"Bearer {world.other_token}"}
    got = httpx.get(f"{world.server.url}/api/get_session", headers=headers, timeout=30)
    assert got.status_code == 200, got.text
    answer, posted = got.json()["result"], ok(post(world.server, "get_session", world.other_token))
    assert posted.pop("timestamp") >= answer.pop("timestamp")  # the server's clock at each answer
    assert answer == posted
    assert session_id in [session["id"] for session in answer["sessions"]]


def test_stop_session_with_one_bad_id_stops_nothing(world: World) -> None:
    first, second = new_session(world, world.other), new_session(world, world.other)
    response = post(world.server, "stop_session", world.other_token, session_ids=f"{first},nope,{second}")
    assert response.json()["error"] == {"code": 2, "message": "no session 'nope'"}
    time.sleep(1)  # a stop would have moved them to shutting_down at once
    states = {sid: sessions_of(world, world.other)[sid]["activity_state"] for sid in (first, second)}
    assert states == {first: "starting", second: "starting"}


def test_stopping_a_suspended_session_ends_it_finished(world: World) -> None:
    session_id = new_session(world, world.other, suspended=True)
    assert sessions_of(world, world.other)[session_id]["suspend_size"] > 0
    assert ok(post(world.server, "stop_session", world.other_token, session_ids=session_id)) == {}
    ended = wait_session(world, world.other, session_id, ("finished",))
    assert not ended["suspend_size"]  # what the suspend kept is discarded


def test_resuming_a_session_that_is_not_suspended_answers_code_4(world: World) -> None:
    session_id = new_session(world, world.other)
    response = post(world.server, "resume_session", world.other_token, session_id=session_id)
    assert response.json()["error"] == {"code": 4, "message": f"session '{session_id}' is starting, not suspended"}
    assert sessions_of(world, world.other)[session_id]["activity_state"] == "starting"
    # Another user's session, resumed without `username`: the caller has no such session.
    mine = world.callers["super-admin"]
    response = post(world.server, "resume_session", mine.token, session_id=session_id)
    assert response.json()["error"] == {"code": 2, "message": f"no session '{session_id}' of user '{mine.username}'"}


def test_denied_stops_left_the_shared_job_running(world: World) -> None:
    """Runs last: every refused stop above left the other user's job alone; now really stop it."""
    assert jobs_of(world, world.other)[world.other_running_job]["status"] == "Running"
    ok(post(world.server, "stop_job", world.callers["admin"].token, job_id=world.other_running_job, force_quit=True))
    ended = wait_status(world, world.other_running_job, world.other, FINAL, timeout=10)
    assert ended["status"] == "Killed", ended


# -- the pure policy, as tables --------------------------------------------------------------------------

# kind -> effective kind for the owner's standing: (plain, admin, super-admin only, admin and super-admin)
STANDING = {
    "user": ("user", "user", "user", "user"),
    "admin-readonly": ("user", "admin-readonly", "admin-readonly", "admin-readonly"),
    "admin": ("user", "admin", "admin", "admin"),
    "super-admin-readonly": ("user", "admin-readonly", "super-admin-readonly", "super-admin-readonly"),
    "super-admin": ("user", "admin", "super-admin", "super-admin"),
}
STANDINGS = ((False, False), (True, False), (False, True), (True, True))


@pytest.mark.parametrize(
    ("kind", "is_admin", "is_super_admin", "effective"),
    [
        pytest.param(kind, adm, sup, STANDING[kind][i], id=f"{kind}-admin={adm}-super={sup}")
        for kind in KINDS
        for i, (adm, sup) in enumerate(STANDINGS)
    ],
)
def test_from_standing(kind: str, is_admin: bool, is_super_admin: bool, effective: str) -> None:
    principal = Principal.from_standing(7, "alice", kind, is_admin, is_super_admin)
    assert principal == Principal(7, "alice", effective)


# kind -> (read others, write others, act as others, list users); an unknown kind gets nothing.
POLICY = {
    "user": (False, False, False, False),
    "admin-readonly": (True, False, False, True),
    "admin": (True, True, False, True),
    "super-admin-readonly": (True, False, False, True),
    "super-admin": (True, True, True, True),
    "no-such-kind": (False, False, False, False),
}
ACTIONS = (Action.READ, Action.WRITE, Action.ACT_AS, Action.LIST_USERS)


@pytest.mark.parametrize(
    ("kind", "action", "owner", "expected"),
    [
        pytest.param(
            kind, action, owner,
            rights[3] if action is Action.LIST_USERS else (owner != "bob" or rights[i]),
            id=f"{kind}-{action.value}-{owner}",
        )
        for kind, rights in POLICY.items()
        for i, action in enumerate(ACTIONS)
        for owner in (None, "alice", "bob")
    ],
)
def test_allowed(kind: str, action: Action, owner: str | None, expected: bool) -> None:
    assert allowed(Principal(1, "alice", kind), action, owner) is expected
