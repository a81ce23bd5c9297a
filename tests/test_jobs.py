"""Local jobs for real: processes, signals, limits, users and live output through the API."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, temporary_posix_user

JOB_FIELDS = {
    "id", "name", "user", "cluster", "command", "exe", "args", "stdin", "stdoutFile", "stderrFile",
    "workingDirectory", "environment", "container", "exposedPorts", "mounts", "placementConstraints", "queues",
    "resourceLimits", "config", "tags", "host", "pid", "exitCode", "status", "statusMessage", "submissionTime",
    "lastUpdateTime",
}


@pytest.fixture(scope="module")
def root_token(server: Server) -> str:
    return server.token("root", "super-admin")


def launch(server: Server, token: str, **job: Any) -> dict[str, Any]:
    job.setdefault("name", "test job")
    result = server.rpc("launch_job", token, job=job)
    return dict(result["job"])


def run(server: Server, token: str, **job: Any) -> dict[str, Any]:
    return server.wait_job(token, launch(server, token, **job)["id"], user=job.get("user"))


def output_lines(server: Server, token: str, job_id: str, **extra: Any) -> Iterator[dict[str, Any]]:
    body = {"method": "get_job_output", "kwparams": {"job_id": job_id, **extra}}
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("POST", f"{server.url}/api/get_job_output", json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        for line in resp.iter_lines():
            yield json.loads(line)


def output_text(server: Server, token: str, job_id: str, kind: str = "stdout") -> str:
    return "".join(c["output"] for c in output_lines(server, token, job_id) if c["outputType"] == kind)


def test_exit_codes_and_fields(server: Server, root_token: str) -> None:
    ok = run(server, root_token, exe="/bin/true")
    failed = run(server, root_token, command="exit 3")
    assert (ok["status"], ok["exitCode"]) == ("Finished", 0)
    assert (failed["status"], failed["exitCode"]) == ("Finished", 3)
    assert JOB_FIELDS <= set(failed)
    assert failed["user"] == "root" and failed["cluster"] == "Local" and failed["host"]
    assert failed["pid"] > 0 and failed["submissionTime"].endswith("Z")
    assert failed["lastUpdateTime"] >= failed["submissionTime"]


def test_exe_args_environment_directory_and_stdin(server: Server, root_token: str, tmp_path: Path) -> None:
    job = run(server, root_token, exe="/bin/sh", args=["-c", 'echo "$GREETING" "$(pwd)"; cat; echo oops >&2'],
              environment=[{"name": "GREETING", "value": "hello world"}], working_directory=str(tmp_path),
              stdin="from stdin\n")
    assert job["status"] == "Finished"
    assert output_text(server, root_token, job["id"]) == f"hello world {tmp_path}\nfrom stdin\n"
    assert output_text(server, root_token, job["id"], "stderr") == "oops\n"
    assert Path(job["stdoutFile"]).read_text() == f"hello world {tmp_path}\nfrom stdin\n"


def test_command_gets_args_as_positional_parameters(server: Server, root_token: str) -> None:
    job = run(server, root_token, command='echo "$0|$1"', args=["zero", "one"])
    assert output_text(server, root_token, job["id"]) == "zero|one\n"


def test_missing_executable_fails_with_reason(server: Server, root_token: str) -> None:
    job = run(server, root_token, exe="/no/such/program")
    assert job["status"] == "Failed"
    assert "/no/such/program" in job["statusMessage"] and "No such file" in job["statusMessage"]


def test_stop_sends_sigterm_to_the_process_group(server: Server, root_token: str) -> None:
    job = launch(server, root_token, command="trap 'echo got TERM; exit 7' TERM; sleep 60 & wait")
    server.wait_job(root_token, job["id"], ("Running",))
    time.sleep(0.2)  # let the shell install its trap
    server.rpc("stop_job", root_token, job_id=job["id"])
    done = server.wait_job(root_token, job["id"])
    assert (done["status"], done["exitCode"]) == ("Finished", 7)
    assert output_text(server, root_token, job["id"]) == "got TERM\n"


def test_stop_plain_process_and_force_quit(server: Server, root_token: str) -> None:
    term = launch(server, root_token, exe="/bin/sleep", args=["60"])
    kill = launch(server, root_token, exe="/bin/sleep", args=["60"])
    for job in (term, kill):
        server.wait_job(root_token, job["id"], ("Running",))
    server.rpc("stop_job", root_token, job_id=term["id"])
    server.rpc("stop_job", root_token, job_id=kill["id"], force_quit=True)
    term, kill = server.wait_job(root_token, term["id"]), server.wait_job(root_token, kill["id"])
    assert (term["status"], term["exitCode"], term["statusMessage"]) == ("Finished", 143, "Terminated by SIGTERM")
    assert (kill["status"], kill["exitCode"]) == ("Killed", 137)
    again = server.post("stop_job", root_token, job_id=kill["id"]).json()
    assert again["error"]["code"] == 4 and "already ended" in again["error"]["message"]


def test_memory_limit_is_enforced(server: Server, root_token: str) -> None:
    hog = "b = bytearray(300 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')"
    job = run(server, root_token, exe="/usr/bin/python3", args=["-c", hog],
              resource_limits=[{"type": "memory", "value": "64"}])
    assert job["status"] == "Killed"
    assert "memory limit of 64 MB" in job["statusMessage"]
    assert "survived" not in output_text(server, root_token, job["id"])
    assert not Path(f"/sys/fs/cgroup/memory/openworkbench/{job['id']}").exists()


def test_memory_kill_of_a_child_is_named(server: Server, root_token: str) -> None:
    hog = "b = b'x' * (300 * 1024 * 1024)"
    job = run(server, root_token, command=f'/usr/bin/python3 -c "{hog}"; echo "child exit $?"',
              resource_limits=[{"type": "memory", "value": "64"}])
    assert (job["status"], job["exitCode"]) == ("Finished", 0)
    assert job["statusMessage"] == "A process of the job was killed: exceeded the memory limit of 64 MB"
    assert output_text(server, root_token, job["id"]) == "child exit 137\n"


# The job reads its own cpu cgroup while it runs (from /proc/self/cgroup: the one it really is in). Throttling is
# not measured: on a loaded machine a busy loop may never get the half CPU it would be throttled at.
CPU_PROBE = """cg=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' /proc/self/cgroup)
echo $cg
cat /sys/fs/cgroup/cpu$cg/cpu.cfs_quota_us /sys/fs/cgroup/cpu$cg/cpu.cfs_period_us"""


def test_cpu_limits(server: Server, root_token: str) -> None:
    probe = run(server, root_token, command=CPU_PROBE, resource_limits=[{"type": "cpuCount", "value": "0.5"}])
    cgroup, quota, period = output_text(server, root_token, probe["id"]).split()
    assert cgroup.endswith(f"/{probe['id']}")  # the job's own cgroup, not the server's
    assert (int(quota), int(period)) == (50000, 100000)  # half a CPU
    job = launch(server, root_token, command="while :; do :; done",
                 resource_limits=[{"type": "cpuCount", "value": "0.5"}, {"name": "cpuTime", "value": 1}])
    done = server.wait_job(root_token, job["id"])
    assert done["status"] == "Killed" and "CPU time limit of 1 s" in done["statusMessage"]
    assert {"type": "cpuTime", "value": "1"} in done["resourceLimits"]


@pytest.mark.parametrize(
    ("job", "code", "text"),
    [
        ({"cluster": "Nowhere"}, 1, "unknown cluster 'Nowhere'"),
        ({"resource_limits": [{"type": "cpuCount", "value": "4096"}]}, 1, "exceeds the maximum"),
        ({"resource_limits": [{"type": "memory", "value": "lots"}]}, 1, "must be a number"),
        ({"queues": ["gpu"]}, 1, "no queue"),
        ({"container_image": "ubuntu"}, 1, "containers"),
        ({"user": "no-such-posix-user"}, 5, "no POSIX account"),
        ({"resource_limits": [{"type": "memorySwap", "value": "100"}]}, 1, "does not support the memorySwap"),
        ({"resource_limits": [{"type": "memory", "value": "0.5"}]}, 1, "must be at least 4"),
    ],
)
def test_launch_refusals_change_nothing(server: Server, root_token: str, job: dict[str, Any], code: int,
                                        text: str) -> None:
    before = len(server.rpc("get_session", root_token, include_all_jobs=True)["jobs"])
    body = server.post("launch_job", root_token, job={"name": "x", "exe": "/bin/true", **job}).json()
    assert body["error"]["code"] == code and text in body["error"]["message"]
    assert len(server.rpc("get_session", root_token, include_all_jobs=True)["jobs"]) == before


def test_jobs_run_as_their_posix_user(server: Server, root_token: str, posix_user: pwd.struct_passwd) -> None:
    name = posix_user.pw_name
    own = server.token(name)
    by_owner = run(server, own, command="id -u; id -un; pwd; echo $HOME")
    on_behalf = run(server, root_token, command="id -un", user=name)
    assert output_text(server, own, by_owner["id"]) == f"{posix_user.pw_uid}\n{name}\n{posix_user.pw_dir}\n" \
                                                      f"{posix_user.pw_dir}\n"
    assert on_behalf["user"] == name and output_text(server, root_token, on_behalf["id"]) == f"{name}\n"
    sealed = os.stat(by_owner["stdoutFile"])  # written as the user; root's and read-only once the job has ended
    assert (sealed.st_uid, sealed.st_gid, sealed.st_mode & 0o777) == (0, posix_user.pw_gid, 0o440)
    assert any(j["id"] == on_behalf["id"] for j in server.rpc("get_session", own, include_all_jobs=True)["jobs"])


def test_output_is_live_while_the_job_runs(server: Server, root_token: str) -> None:
    job = launch(server, root_token, command="echo first; sleep 30; echo never")
    stream = output_lines(server, root_token, job["id"])
    first = next(stream)
    # The first line arrived while the job still sleeps: it was streamed, not read after the end.
    assert first == {"jobId": job["id"], "outputType": "stdout", "output": "first\n"}
    assert server.job(root_token, job["id"])["status"] in ("Pending", "Running")  # the monitor may lag the file
    server.rpc("stop_job", root_token, job_id=job["id"])
    assert list(stream) == []  # the stream ends with the job


def test_megabytes_of_output_are_streamed_in_chunks(server: Server, root_token: str) -> None:
    size = 12 * 1024 * 1024
    job = run(server, root_token, command=f"head -c {size} /dev/zero | tr '\\0' x")
    chunks = [c["output"] for c in output_lines(server, root_token, job["id"])]
    assert sum(len(c) for c in chunks) == size and set("".join(chunks[:3])) == {"x"}
    assert max(len(c) for c in chunks) <= 64 * 1024


def test_output_of_unknown_or_foreign_job(server: Server, root_token: str) -> None:
    missing = server.post("get_job_output", root_token, job_id="nope").json()
    assert missing["error"]["code"] == 2
    job = run(server, root_token, exe="/bin/true")
    other = server.token("mallory")
    assert server.post("get_job_output", other, job_id=job["id"]).status_code == 403
    wrong_user = server.post("get_job_output", root_token, job_id=job["id"], user="mallory").json()
    assert wrong_user["error"]["code"] == 2



# -- promises of docs/api.md and docs/clusters.md ------------------------------------------------------------


def wait_for_file(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def held(release: Path, before: str = "echo first") -> str:
    """A command that prints, then runs until the test creates ``release``."""
    return f"{before}; while [ ! -e {release} ]; do sleep 0.05; done"


def test_invalid_utf8_in_output_becomes_replacement_characters(server: Server, root_token: str) -> None:
    job = run(server, root_token, command=r"printf 'a\377b\n'; printf '\342\202' >&2")  # a cut-off euro sign
    assert output_text(server, root_token, job["id"]) == "a\ufffdb\n"
    assert output_text(server, root_token, job["id"], "stderr") == "\ufffd"


def test_an_error_while_streaming_is_the_last_line(server: Server, root_token: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    job = launch(server, root_token, command=held(release))
    server.wait_job(root_token, job["id"], ("Running",))
    stderr = Path(job["stderrFile"])
    wait_for_file(stderr)
    # A real failure: a directory where the job's stderr file was (not a regular file: never streamed).
    stderr.rename(stderr.with_name("stderr.moved"))
    stderr.mkdir()
    try:
        lines = list(output_lines(server, root_token, job["id"]))
    finally:
        release.touch()
    assert lines[0] == {"jobId": job["id"], "outputType": "stdout", "output": "first\n"}  # sent before the error
    assert lines[-1]["error"]["code"] == 4
    assert "the job's stderr file is not streamed" in lines[-1]["error"]["message"]
    assert "not a regular file" in lines[-1]["error"]["message"]
    assert len(lines) == 2
    server.wait_job(root_token, job["id"])


def test_the_output_of_a_job_as_a_user_with_supplementary_groups(server: Server, root_token: str) -> None:
    group = f"owbg{secrets.token_hex(3)}"
    subprocess.run(["groupadd", group], check=True)
    try:
        with temporary_posix_user() as user:
            subprocess.run(["usermod", "-aG", group, user.pw_name], check=True)
            job = run(server, root_token, command="id -G", user=user.pw_name)
            groups = {int(gid) for gid in output_text(server, root_token, job["id"]).split()}
            assert groups == {user.pw_gid, grp.getgrnam(group).gr_gid}  # its own group and the extra one, only
    finally:
        subprocess.run(["groupdel", group], check=False)


def test_without_cgroups_memory_and_cpu_count_are_refused(fresh_server: Server) -> None:
    fresh_server.config_text = "[local]\ncgroups = false\n"
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    for kind, value in (("memory", "64"), ("cpuCount", "1")):
        body = server.post("launch_job", token, job={"name": "x", "exe": "/bin/true",
                                                     "resource_limits": [{"type": kind, "value": value}]}).json()
        assert body["error"] == {"code": 1, "message": f"cluster 'Local' cannot enforce {kind}: "
                                                       "cgroups are not available"}
    assert server.rpc("get_session", token, include_all_jobs=True)["jobs"] == []
    assert run(server, token, exe="/bin/true", resource_limits=[{"type": "cpuTime", "value": "5"}])["status"] == \
        "Finished"  # a limit that needs no cgroup is still enforced


def test_a_launcher_that_never_answers_fails_the_launch(fresh_server: Server, tmp_path: Path) -> None:
    hung = Path("/tmp") / f"owb-hung-python-{secrets.token_hex(3)}"  # the launcher's interpreter: it never answers
    hung.write_text("#!/bin/sh\nexec sleep 600\n")
    hung.chmod(0o755)
    try:
        fresh_server.config_text = f'[local]\nsupervisor_python = "{hung}"\n'
        server = fresh_server.start()
        token = server.token("root", "super-admin")
        body = server.post("launch_job", token, job={"name": "x", "exe": "/bin/true"}).json()
        assert body["error"] == {"code": 5, "message": "the job launcher did not answer within 10 s"}
    finally:
        hung.unlink()


def test_a_job_of_a_cluster_no_longer_configured_fails(fresh_server: Server, tmp_path: Path) -> None:
    release = tmp_path / "release"
    fresh_server.config_text = '[clusters.Local]\ntype = "Local"\n[clusters.Gone]\ntype = "Local"\n'
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    job = launch(server, token, command=held(release), cluster="Gone")
    server.wait_job(token, job["id"], ("Running",))
    server.stop()
    fresh_server.config_text = '[clusters.Local]\ntype = "Local"\n'
    server.start()
    try:
        done = server.wait_job(token, job["id"])
        assert (done["status"], done["statusMessage"]) == ("Failed", "cluster 'Gone' is no longer configured")
    finally:
        release.touch()


def test_shutdown_closes_open_output_streams(fresh_server: Server, tmp_path: Path) -> None:
    release = tmp_path / "release"
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    job = launch(server, token, command=held(release))
    server.wait_job(token, job["id"], ("Running",))
    try:
        stream = output_lines(server, token, job["id"])
        assert next(stream)["output"] == "first\n"
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)  # the job runs on; the server must not wait for the stream
        with contextlib.suppress(httpx.RemoteProtocolError):
            assert list(stream) == []
        server.proc.wait(timeout=60)  # it exited (uvicorn re-raises the SIGTERM once shut down cleanly)
        server.proc = None
        server.start()
        again = output_lines(server, token, job["id"])
        assert next(again)["output"] == "first\n"  # asked again: from the beginning
        again.close()
    finally:
        release.touch()
    assert server.wait_job(token, job["id"])["status"] == "Finished"
