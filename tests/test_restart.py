"""Nothing recorded is lost when the server is killed: jobs end with their status and output."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx

from openworkbench.store import Store
from openworkbench.store.schema import Job, utcnow
from tests.conftest import Server


def follow(server: Server, token: str, job_id: str) -> str:
    body = {"method": "get_job_output", "kwparams": {"job_id": job_id}}
    response = httpx.post(f"{server.url}/api/get_job_output", json=body,
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return "".join(json.loads(line)["output"] for line in response.text.splitlines())


def test_sigkill_of_the_server_loses_no_job(fresh_server: Server, database_url: str) -> None:
    fresh_server.database_url = database_url  # the whole server on SQLite and on PostgreSQL
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    script = "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done; exit {code}"
    jobs = [server.rpc("launch_job", token, job={"name": f"j{code}", "command": script.format(code=code)})["job"]
            for code in (0, 4)]
    quick = server.rpc("launch_job", token, job={"name": "quick", "command": "echo quick"})["job"]
    server.wait_job(token, jobs[0]["id"], ("Running",))
    server.stop(signal.SIGKILL)

    time.sleep(3.5)  # the jobs finish while no server runs
    server.start()
    expected = "".join(f"tick {i}\n" for i in range(1, 7))
    for job, code in zip(jobs, (0, 4), strict=True):
        done = server.wait_job(token, job["id"])
        assert (done["status"], done["exitCode"]) == ("Finished", code)
        assert follow(server, token, job["id"]) == expected
    assert server.wait_job(token, quick["id"])["status"] == "Finished"
    assert follow(server, token, quick["id"]) == "quick\n"


def test_a_job_running_across_the_restart_is_followed_live(fresh_server: Server, tmp_path: Path) -> None:
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    release = tmp_path / "release"  # the job waits for it: it is still running for as long as the test wants
    command = f"echo a; while [ ! -e {release} ]; do sleep 0.05; done; echo b; exit 9"
    job = server.rpc("launch_job", token, job={"name": "long", "command": command})["job"]
    server.wait_job(token, job["id"], ("Running",))
    server.stop(signal.SIGKILL)
    server.start()
    assert server.job(token, job["id"])["status"] == "Running"
    body = {"method": "get_job_output", "kwparams": {"job_id": job["id"]}}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{server.url}/api/get_job_output", json=body, headers=headers) as resp:
        lines = resp.iter_lines()
        seen = ""
        while seen != "a\n":  # the first line arrives while the job still runs...
            seen += json.loads(next(lines))["output"]
        assert server.job(token, job["id"])["status"] == "Running"
        release.touch()
        rest = "".join(json.loads(line)["output"] for line in lines)  # ...and the stream ends with the job
    assert seen + rest == "a\nb\n"
    assert server.wait_job(token, job["id"])["exitCode"] == 9


def test_a_job_recorded_but_never_started_is_started_after_restart(fresh_server: Server) -> None:
    # Inject the crash window between "committed Pending" and "supervisor spawned": a stored
    # Pending job with no job directory, as a server killed at that instant leaves behind.
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    server.stop(signal.SIGKILL)
    store = Store(f"sqlite:///{server.data_dir / 'workbench.db'}")
    user_id = server.accounts().ensure_user("root")
    spec = {"name": "orphan", "command": "echo recovered", "user": "root", "cluster": "Local"}
    with store.session() as db:
        db.add(Job(id="feedfacecafebeef", user_id=user_id, cluster="Local", name="orphan", spec=spec,
                   status="Pending", status_message="", host="", stdout_file="", stderr_file="",
                   cluster_state={}, submission_time=utcnow(), last_update_time=utcnow()))
    store.dispose()
    server.start()
    done = server.wait_job(token, "feedfacecafebeef")
    assert (done["status"], done["exitCode"]) == ("Finished", 0)
    assert follow(server, token, "feedfacecafebeef") == "recovered\n"


def test_a_lost_supervisor_ends_the_job_failed_with_a_reason(fresh_server: Server) -> None:
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    job = server.rpc("launch_job", token, job={"name": "victim", "exe": "/bin/sleep", "args": ["30"]})["job"]
    server.wait_job(token, job["id"], ("Running",))
    server.stop(signal.SIGKILL)
    job_dir = server.data_dir / "jobs" / job["id"]
    supervisor = json.loads((job_dir / "lock").read_text())["supervisorPid"]
    os.kill(supervisor, signal.SIGKILL)  # the failure we cannot cause otherwise: the supervisor dies
    os.killpg(json.loads((job_dir / "state.json").read_text())["pgid"], signal.SIGKILL)
    server.start()
    done = server.wait_job(token, job["id"])
    assert done["status"] == "Failed" and "supervisor was lost" in done["statusMessage"]
    assert Path(done["stdoutFile"]).exists()
