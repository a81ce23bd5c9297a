"""Issue 9, attacks 3 and 10, done for real: a user's job makes its output a 200 GB sparse file, writes past the
file size limit, fork-bombs, or its output path is a FIFO or a symlink; another user's get_session must stay
fast meanwhile, and the server must stop reading a stream whose client has gone."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from openworkbench.clusters.base import Account
from openworkbench.clusters.slurm.script import job_paths, render_script
from openworkbench.clusters.slurm.states import ended
from openworkbench.config import load_settings
from openworkbench.errors import ConfigError
from openworkbench.models import JobSpec
from tests.conftest import Server, temporary_posix_user
from tests.sessions_helpers import launch as launch_session
from tests.sessions_helpers import session_server, wait_state

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real POSIX users and cgroups need root")

SLURM_CONF = os.environ.get("WORKBENCH_TEST_SLURM_CONF", "")
BUDGET = 128 * 1024 * 1024  # jobs.output_stream_max_bytes of this module's server
MAX_PIDS = 50
CONFIG = f"""
[jobs]
output_stream_max_bytes = {BUDGET}

[clusters.Local]
type = "Local"
max_file_size_mb = 1
max_pids = {MAX_PIDS}

# Where a job may make a 200 GB file: with a file size limit, truncate itself is stopped (see below).
[clusters.NoFileLimit]
type = "Local"
max_file_size_mb = 0
"""


@dataclass
class Users:
    attacker: pwd.struct_passwd
    victim: pwd.struct_passwd
    attacker_token: str
    victim_token: str


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("secout") / "data", config_text=CONFIG).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def users(srv: Server) -> Iterator[Users]:
    with temporary_posix_user("owbatk") as attacker, temporary_posix_user("owbvic") as victim:
        yield Users(attacker, victim, srv.token(attacker.pw_name), srv.token(victim.pw_name))


def launch(srv: Server, token: str, **job: Any) -> dict[str, Any]:
    job.setdefault("name", "attack")
    return dict(srv.rpc("launch_job", token, job=job)["job"])


def get_session_seconds(srv: Server, token: str) -> float:
    started = time.monotonic()
    srv.rpc("get_session", token)
    return time.monotonic() - started


def server_fds_on(srv: Server, path: str) -> int:
    assert srv.proc is not None
    fd_dir = Path(f"/proc/{srv.proc.pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += os.readlink(fd) == path
        except OSError:
            continue  # closed while we looked
    return count


def server_rchar(srv: Server) -> int:
    """Bytes the server process has passed through read() and friends: holes of a sparse file count too."""
    assert srv.proc is not None
    io = dict(line.split(": ") for line in Path(f"/proc/{srv.proc.pid}/io").read_text().splitlines())
    return int(io["rchar"])


def wait_for(check: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


@dataclass
class StreamResult:
    output_bytes: int = 0
    lines: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def read_whole_stream(srv: Server, token: str, job_id: str, result: StreamResult) -> None:
    body = {"method": "get_job_output", "kwparams": {"job_id": job_id}}
    try:
        with httpx.stream("POST", f"{srv.url}/api/get_job_output", json=body,
                          headers={"Authorization": f"Bearer {token}"}, timeout=300) as resp:
            for text in resp.iter_lines():
                result.last = json.loads(text)
                result.output_bytes += len(result.last.get("output", ""))
                result.lines += 1
    except BaseException as exc:  # reported by the test thread
        result.error = exc
    finally:
        result.done.set()


def sparse_job(srv: Server, users: Users) -> dict[str, Any]:
    """The attack: the job makes its own stdout a 200 GB file of holes (through /proc/self/fd/1, a magic link
    that needs no access to the root-owned job directory), then stays."""
    job = launch(srv, users.attacker_token, command="truncate -s 200G /proc/self/fd/1 && sleep 600",
                 cluster="NoFileLimit")
    srv.wait_job(users.attacker_token, job["id"], ("Running",))
    assert wait_for(lambda: os.stat(job["stdoutFile"]).st_size == 200 * 1024**3)
    return job


@pytest.mark.serial  # asserts another user's get_session under 1 s: alone, not beside the parallel phase
def test_sparse_output_streams_up_to_the_budget_while_others_stay_fast(srv: Server, users: Users) -> None:
    job = sparse_job(srv, users)
    result = StreamResult()
    reader = threading.Thread(target=read_whole_stream, args=(srv, users.attacker_token, job["id"], result))
    reader.start()
    assert wait_for(lambda: result.lines > 0 or result.done.is_set())
    during = []  # latencies of calls that both began and ended while the stream ran
    while not result.done.is_set() and len(during) < 20:
        seconds = get_session_seconds(srv, users.victim_token)
        if not result.done.is_set():
            during.append(seconds)
    reader.join(timeout=300)
    srv.rpc("stop_job", users.attacker_token, job_id=job["id"], force_quit=True)
    assert result.error is None, result.error
    assert len(during) >= 5, (during, "the stream ended before enough measurements")
    assert max(during) < 1.0, during  # the requirement: another user's get_session under 1 s
    assert result.output_bytes == BUDGET  # holes read as NULs, one character each, up to the budget exactly
    assert result.last["error"]["code"] == 3
    message = result.last["error"]["message"]
    assert "jobs.output_stream_max_bytes" in message and str(BUDGET) in message


def test_the_server_stops_reading_when_the_client_goes(srv: Server, users: Users) -> None:
    job = sparse_job(srv, users)
    body = {"method": "get_job_output", "kwparams": {"job_id": job["id"]}}
    headers = {"Authorization": f"Bearer {users.attacker_token}"}
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{srv.url}/api/get_job_output", json=body,
                                                          headers=headers) as resp:
        # Held in a name: a dropped iterator closes the connection at once (httpcore closes it on
        # GeneratorExit), and then the server rightly let go of the file before the count below.
        chunks = resp.iter_raw(64 * 1024)
        assert next(chunks)
        assert server_fds_on(srv, job["stdoutFile"]) == 1  # the stream is alive, held up by this slow client
        # The client goes: the connection closes without reading the rest.
    assert wait_for(lambda: server_fds_on(srv, job["stdoutFile"]) == 0), "the server still holds the output file"
    settled = server_rchar(srv)
    time.sleep(1)  # a window to measure in, not a deadline
    assert server_rchar(srv) - settled < 4 * 1024 * 1024  # not a stream's 100s of MB/s of holes
    srv.rpc("stop_job", users.attacker_token, job_id=job["id"], force_quit=True)
    srv.wait_job(users.attacker_token, job["id"])


def test_a_job_writing_past_the_file_size_limit_is_stopped(srv: Server, users: Users) -> None:
    job = launch(srv, users.attacker_token, exe="/usr/bin/head", args=["-c", "3000000", "/dev/zero"])
    done = srv.wait_job(users.attacker_token, job["id"])
    assert (done["status"], done["exitCode"]) == ("Finished", 128 + 25)
    assert done["statusMessage"] == "Terminated by SIGXFSZ: a file it wrote reached the file size limit of 1 MB"
    assert os.stat(done["stdoutFile"]).st_size == 1024 * 1024
    # Any file, not only the output: a program that ignores SIGXFSZ gets EFBIG.
    home = users.attacker.pw_dir
    script = ("import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              f"open('{home}/big', 'wb').write(bytes(3 << 20))")
    job = launch(srv, users.attacker_token, exe="/usr/bin/python3", args=["-c", script])
    done = srv.wait_job(users.attacker_token, job["id"])
    assert (done["status"], done["exitCode"]) == ("Finished", 1)
    lines = output_lines(srv, users.attacker_token, job["id"])
    stderr = "".join(c["output"] for c in lines if c["outputType"] == "stderr")
    assert "File too large" in stderr
    assert os.stat(f"{home}/big").st_size == 1024 * 1024


def test_the_file_size_limit_stops_the_sparse_file_attack_itself(srv: Server, users: Users) -> None:
    job = launch(srv, users.attacker_token, command="exec truncate -s 200G /proc/self/fd/1")
    done = srv.wait_job(users.attacker_token, job["id"])
    assert (done["status"], done["exitCode"]) == ("Finished", 128 + 25)
    assert "SIGXFSZ" in done["statusMessage"]
    assert os.stat(done["stdoutFile"]).st_size == 0


def output_lines(srv: Server, token: str, job_id: str) -> list[dict[str, Any]]:
    response = srv.client.post(f"{srv.url}/api/get_job_output", json={"kwparams": {"job_id": job_id}},
                               headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return [json.loads(text) for text in response.text.splitlines()]


def test_the_slurm_wrapper_sets_the_file_size_limit(tmp_path: Path) -> None:
    """The rendered batch script, run by bash as Slurm would run it: its program is stopped at the limit."""
    account_entry = pwd.getpwuid(os.getuid())
    account = Account(account_entry.pw_name, account_entry.pw_uid, account_entry.pw_gid, (), str(tmp_path), "/bin/sh")
    paths = job_paths(str(tmp_path), "j1")
    (tmp_path / "j1" / "status").mkdir(parents=True)
    spec = JobSpec(name="big", exe="/usr/bin/head", args=["-c", "3000000", "/dev/zero"])
    script = render_script("j1", spec, account, paths, max_file_size_mb=2)
    assert "ulimit -f 2048 " in script
    assert "ulimit" not in render_script("j1", spec, account, paths, max_file_size_mb=0)
    Path(paths.script).write_text(script)
    with open(paths.stdout, "wb") as out:
        subprocess.run(["/bin/bash", paths.script], stdout=out, stderr=subprocess.DEVNULL, check=False, timeout=60)
    assert os.stat(paths.stdout).st_size == 2 * 1024 * 1024
    code = int(Path(paths.exit).read_text().split()[0])
    assert code == 128 + 25
    state = ended(code, code - 128)
    assert (state.status, state.exit_code) == ("Finished", 153) and "file size limit" in state.status_message


@pytest.mark.skipif(not SLURM_CONF, reason="needs a Slurm cluster: run under scripts/with-slurm.sh")
def test_a_real_slurm_job_writing_past_the_file_size_limit_is_stopped(tmp_path: Path, users: Users) -> None:
    output_dir = Path(tempfile.mkdtemp(prefix="owb-slurm-out-", dir="/tmp"))  # the job's user must reach it
    output_dir.chmod(0o711)
    config = (f'[clusters.Slurm]\ntype = "Slurm"\nslurm_conf = "{SLURM_CONF}"\noutput_dir = "{output_dir}"\n'
              "poll_interval_s = 0.5\nmax_file_size_mb = 1\n")
    server = Server(tmp_path / "data", config_text=config).start()
    try:
        token = server.token(users.attacker.pw_name)
        job = launch(server, token, exe="/usr/bin/head", args=["-c", "3000000", "/dev/zero"])
        done = server.wait_job(token, job["id"], timeout=120)
        assert (done["status"], done["exitCode"]) == ("Finished", 128 + 25)
        assert "file size limit" in done["statusMessage"]
        assert os.stat(done["stdoutFile"]).st_size == 1024 * 1024
    finally:
        server.stop()
        subprocess.run(["scancel", "-u", users.attacker.pw_name], env={**os.environ, "SLURM_CONF": SLURM_CONF},
                       check=False)
        shutil.rmtree(output_dir, ignore_errors=True)


def job_cgroup(job_id: str, controller: str) -> Path:
    return Path(f"/sys/fs/cgroup/{controller}/openworkbench/{job_id}")


@pytest.mark.serial  # asserts another user's get_session under 1 s: alone, not beside the parallel phase
def test_a_fork_bomb_stops_at_the_pids_limit(srv: Server, users: Users) -> None:
    bomb = (
        "import os, sys, time\n"
        "started = 0\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(600); os._exit(0)\n"
        "    started += 1\n"
        "print(started, flush=True)\n"
        "time.sleep(600)\n"
    )
    job = launch(srv, users.attacker_token, exe="/usr/bin/python3", args=["-c", bomb])
    srv.wait_job(users.attacker_token, job["id"], ("Running",))
    assert wait_for(lambda: os.path.getsize(job["stdoutFile"]) > 0, timeout=120)
    started = int(Path(job["stdoutFile"]).read_text())
    pids = job_cgroup(job["id"], "pids")
    assert (pids / "pids.max").read_text().strip() == str(MAX_PIDS)
    assert started < MAX_PIDS and int((pids / "pids.peak").read_text()) <= MAX_PIDS
    latencies = [get_session_seconds(srv, users.victim_token) for _ in range(10)]
    assert max(latencies) < 1.0, latencies
    srv.rpc("stop_job", users.attacker_token, job_id=job["id"], force_quit=True)
    done = srv.wait_job(users.attacker_token, job["id"])
    assert done["status"] == "Killed"
    refused = 10000 - started
    assert f"{refused} process creation(s) refused: the job reached its limit of {MAX_PIDS} processes" in \
        done["statusMessage"]


def machine_mb() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)


def test_compute_envs_show_the_default_limits_and_jobs_get_them(srv: Server, users: Users) -> None:
    env = srv.rpc("get_compute_envs", users.victim_token)["clusters"][0]
    limits = {item["type"]: item for item in env["resourceLimits"]}
    default_mb = str(machine_mb() * 50 // 100)
    assert limits["memory"]["defaultValue"] == default_mb
    assert limits["pids"] == {"type": "pids", "maxValue": str(MAX_PIDS), "defaultValue": str(MAX_PIDS)}
    job = launch(srv, users.victim_token, exe="/bin/sleep", args=["60"])
    srv.wait_job(users.victim_token, job["id"], ("Running",))
    memory = job_cgroup(job["id"], "memory") / "memory.limit_in_bytes"
    assert int(memory.read_text()) == int(default_mb) * 1024 * 1024
    srv.rpc("stop_job", users.victim_token, job_id=job["id"], force_quit=True)
    srv.wait_job(users.victim_token, job["id"])


@pytest.mark.serial  # asserts another user's get_session under 1 s: alone, not beside the parallel phase
@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_a_fifo_or_symlink_output_file_blocks_no_thread(srv: Server, users: Users, planted: str) -> None:
    job = launch(srv, users.attacker_token, command="echo hello")
    done = srv.wait_job(users.attacker_token, job["id"])
    # The job directory is the server's (0700), so a user cannot plant these there: the test does, as root, what
    # a layout with a user-writable output directory would let a user do.
    path = done["stdoutFile"]
    os.unlink(path)
    if planted == "fifo":
        os.mkfifo(path, 0o666)
        expected = "is not a regular file"
    else:
        os.symlink("/etc/shadow", path)
        expected = "is a symbolic link or not a directory: refused"
    # More calls than the server has worker threads: a blocking open in each would leave none for get_session.
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: output_lines(srv, users.attacker_token, job["id"]), range(60)))
    for lines in answers:
        assert lines == [{"error": {"code": 4, "message": f"the job's stdout file is not streamed: {path} {expected}"}}]
    assert get_session_seconds(srv, users.victim_token) < 1.0
    assert stat.S_ISFIFO(os.lstat(path).st_mode) or os.path.islink(path)  # untouched


def test_defaults_apply_only_where_cgroups_can_enforce_them(tmp_path: Path) -> None:
    no_cgroups = '[local]\ncgroups = false\n[clusters.Local]\ntype = "Local"\n'
    refused = Server(tmp_path / "refused", config_text=no_cgroups + "max_pids = 10\n")
    with pytest.raises(RuntimeError, match=re.escape("config key 'clusters.Local.max_pids': needs cgroups")):
        refused.start()
    server = Server(tmp_path / "plain", config_text=no_cgroups).start()
    try:
        env = server.rpc("get_compute_envs", server.token("root", "super-admin"))["clusters"][0]
        limits = {item["type"]: item for item in env["resourceLimits"]}
        assert "pids" not in limits and limits["memory"]["defaultValue"] == ""
    finally:
        server.stop()
    slurm = tmp_path / "slurm.toml"
    slurm.write_text('[clusters.HPC]\ntype = "Slurm"\noutput_dir = "/tmp/x"\nmax_pids = 10\n')
    with pytest.raises(ConfigError, match="max_pids: Local clusters only"):
        load_settings(slurm)


@pytest.mark.skipif(not Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists(), reason="IDEs not installed")
def test_a_session_ide_gets_the_default_limits(tmp_path: Path, users: Users) -> None:
    with session_server(tmp_path / "data") as server:  # built-in defaults: nothing configured
        token = server.token(users.victim.pw_name)
        started = launch_session(server, token, "JupyterLab", name="lab")
        wait_state(server, token, started["id"], ("running",))
        job = server.rpc("get_session", token, session_id=started["id"], include_jobs=True)["jobs"][0]
        try:
            assert (job_cgroup(job["id"], "pids") / "pids.max").read_text().strip() == "4096"
            memory = int((job_cgroup(job["id"], "memory") / "memory.limit_in_bytes").read_text())
            assert memory == machine_mb() * 50 // 100 * 1024 * 1024
            limits = Path(f"/proc/{job['pid']}/limits").read_text().splitlines()
            file_size = next(line for line in limits if line.startswith("Max file size")).split()[3:5]
            assert file_size == [str(10240 * 1024 * 1024)] * 2  # soft and hard
        finally:
            server.rpc("stop_session", token, session_ids=started["id"])
            wait_state(server, token, started["id"], ("finished", "killed"))
