"""The job launcher: a real launcher process (and a real server) forking real supervisors."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server

LAUNCHER = Path(__file__).resolve().parents[1] / "src" / "openworkbench" / "clusters" / "launcher.py"
SYSTEM_PYTHON = "/usr/bin/python3"
FINAL = {"Finished", "Killed", "Failed", "Canceled"}


class Launcher:
    """launcher.py started as the server starts it, spoken to as the server does."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self.log = jobs_dir.parent / "launcher.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SYSTEM_PYTHON, "-E", "-s", str(LAUNCHER), str(jobs_dir)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0)

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def reply(self, timeout: float = 10) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd, data = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no reply; got {data!r}"
            chunk = os.read(fd, 4096)
            assert chunk, f"the launcher exited: {self.log.read_text()}"
            data += chunk
        return json.loads(data)  # type: ignore[no-any-return]

    def ask(self, request: Any) -> dict[str, Any]:
        self.send(json.dumps(request).encode() + b"\n")
        return self.reply()

    def close(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=10)


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "jobs"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def launcher(jobs_dir: Path) -> Iterator[Launcher]:
    started = Launcher(jobs_dir)
    yield started
    started.close()


@pytest.fixture
def make_job(jobs_dir: Path) -> Iterator[Callable[..., Path]]:
    """A job directory with a spec.json, as the server's submit leaves it."""
    made: list[Path] = []

    def make(name: str, argv: list[str]) -> Path:
        job_dir = jobs_dir / name
        job_dir.mkdir(mode=0o700)
        spec = {"argv": argv, "env": {"PATH": "/usr/bin:/bin"}, "cwd": "/", "uid": os.getuid(), "gid": os.getgid(),
                "groups": [os.getgid()], "user": "test", "stdout": str(job_dir / "stdout"),
                "stderr": str(job_dir / "stdout"), "stdin": "",
                "limits": {"memory_mb": None, "cpu_count": None, "cpu_time_s": None},
                "cgroup_root": None, "cgroup_name": f"owb-test/{name}"}
        (job_dir / "spec.json").write_text(json.dumps(spec))
        made.append(job_dir)
        return job_dir

    yield make
    for job_dir in made:  # never leave a job behind
        try:
            state = json.loads((job_dir / "state.json").read_text())
        except (OSError, ValueError):
            continue
        if state.get("status") == "Running":
            try:
                os.killpg(state["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_state(job_dir: Path, statuses: set[str], timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state: dict[str, Any] = json.loads((job_dir / "state.json").read_text())
            if state["status"] in statuses:
                return state
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{job_dir.name} never reached {statuses}")


def supervisor_pid(job_dir: Path) -> int:
    """The pid the supervisor writes into its lock file once it runs."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = (job_dir / "lock").read_text()
        if text:
            return int(json.loads(text)["supervisorPid"])
        time.sleep(0.02)
    raise AssertionError(f"{job_dir.name}: no supervisor pid in its lock file")


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state letter) of the processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(fields[1]) == pid:
            found.append((int(entry), fields[0]))
    return found


def test_a_job_runs_in_its_own_session_with_nothing_of_the_launcher(launcher: Launcher,
                                                                    make_job: Callable[..., Path]) -> None:
    job_dir = make_job("j1", ["/bin/sh", "-c", "ls /proc/self/fd; echo sid=$(ps -o sid= -p $$)"])
    assert launcher.ask({"job": "j1"}) == {"started": True}
    state = wait_state(job_dir, FINAL)
    assert (state["status"], state["exitCode"]) == ("Finished", 0)
    fds, sid = (job_dir / "stdout").read_text().split("sid=")
    assert fds.split() == ["0", "1", "2", "3"]  # 3: the directory ls reads; no pipe, no lock, no log
    assert int(sid) == supervisor_pid(job_dir)  # the supervisor leads its own session; the job is in it
    assert not (job_dir / "supervisor.log").exists()  # created only when there is something to say


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "a request is"),
        (b'{"job": 7}\n', "a request is"),
        (b'{"nojob": "j"}\n', "a request is"),
        (b'{"job": "../jobs"}\n', "a request is"),
        (b'{"job": "a/b"}\n', "a request is"),
        (b'{"job": "/etc"}\n', "a request is"),
        (b'{"job": ".."}\n', "a request is"),
        (b'{"job": ""}\n', "a request is"),
        (b'{"job": "missing"}\n', "no job directory"),
        (b'{"job": "' + b"x" * 5000 + b'"}\n', "at most 4096 bytes"),
    ],
)
def test_bad_requests_are_refused_and_the_launcher_carries_on(launcher: Launcher, make_job: Callable[..., Path],
                                                              line: bytes, error: str) -> None:
    launcher.send(line)
    assert error in launcher.reply()["error"]
    job_dir = make_job("after", ["/bin/true"])
    assert "started" in launcher.ask({"job": "after"})  # the next request gets its own reply
    assert wait_state(job_dir, FINAL)["status"] == "Finished"


def test_only_real_job_directories_of_the_server_user(launcher: Launcher, jobs_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (jobs_dir / "link").symlink_to(outside)
    (jobs_dir / "file").write_text("")
    for name in ("link", "file"):
        assert "not a directory of the server's user" in launcher.ask({"job": name})["error"]
    assert not (outside / "lock").exists()


def test_a_job_with_a_live_supervisor_is_not_started_twice(launcher: Launcher, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("once", ["/bin/sh", "-c", "echo ran >> count; sleep 1"])
    (job_dir / "spec.json").write_text((job_dir / "spec.json").read_text().replace('"cwd": "/"',
                                                                                   f'"cwd": "{job_dir}"'))
    assert "started" in launcher.ask({"job": "once"})
    assert launcher.ask({"job": "once"}) == {"running": True}
    wait_state(job_dir, FINAL)
    assert (job_dir / "count").read_text() == "ran\n"


def test_supervisors_are_reaped_and_outlive_the_launcher(launcher: Launcher, make_job: Callable[..., Path]) -> None:
    quick = [make_job(f"q{i}", ["/bin/true"]) for i in range(20)]
    for job_dir in quick:
        assert "started" in launcher.ask({"job": job_dir.name})
    for job_dir in quick:
        wait_state(job_dir, FINAL)
    deadline = time.monotonic() + 5
    while children(launcher.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children(launcher.proc.pid) == []  # no zombies piling up

    slow = make_job("slow", ["/bin/sh", "-c", "sleep 2; exit 5"])
    assert launcher.ask({"job": "slow"}) == {"started": True}
    wait_state(slow, {"Running"})
    supervisor = supervisor_pid(slow)
    assert launcher.close() == 0  # EOF of its stdin: it exits at once...
    assert launcher.proc.stdout is not None and launcher.proc.stdout.read() == b""  # ...and nothing holds its pipe
    os.kill(supervisor, 0)  # ...but the supervisor lives on
    state = wait_state(slow, FINAL)
    assert (state["status"], state["exitCode"]) == ("Finished", 5)


def test_an_unsafe_jobs_directory_is_refused(jobs_dir: Path) -> None:
    jobs_dir.chmod(0o777)
    started = Launcher(jobs_dir)
    assert started.close() == 1
    assert "writable by no one else" in started.log.read_text()


def test_a_supervisor_killed_is_noted_in_its_log(launcher: Launcher, make_job: Callable[..., Path]) -> None:
    job_dir = make_job("victim", ["/bin/sleep", "30"])
    assert launcher.ask({"job": "victim"}) == {"started": True}
    running = wait_state(job_dir, {"Running"})
    supervisor = supervisor_pid(job_dir)
    os.kill(supervisor, signal.SIGKILL)
    os.killpg(running["pgid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not (job_dir / "supervisor.log").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (job_dir / "supervisor.log").read_text() == "supervisor killed by SIGKILL\n"


# ----------------------------------------------------------------------------- through the server


def launcher_of(server: Server) -> int:
    assert server.proc is not None
    found = [pid for pid, _ in children(server.proc.pid)
             if "launcher.py" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    assert len(found) == 1, found
    return found[0]


def test_the_server_starts_a_new_launcher_when_it_was_killed(fresh_server: Server) -> None:
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    first = server.rpc("launch_job", token, job={"name": "one", "exe": "/bin/true"})["job"]
    old = launcher_of(server)
    os.kill(old, signal.SIGKILL)
    second = server.rpc("launch_job", token, job={"name": "two", "command": "echo two"})["job"]
    assert launcher_of(server) != old
    for job in (first, second):
        done = server.wait_job(token, job["id"])
        assert (done["status"], done["exitCode"]) == ("Finished", 0)


def test_the_launcher_ends_with_the_server_and_its_jobs_do_not(fresh_server: Server) -> None:
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    job = server.rpc("launch_job", token, job={"name": "long", "command": "sleep 1.5; echo done"})["job"]
    server.wait_job(token, job["id"], ("Running",))
    pid = launcher_of(server)
    server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    server.start()
    done = server.wait_job(token, job["id"])
    assert (done["status"], done["exitCode"]) == ("Finished", 0)
    assert Path(done["stdoutFile"]).read_text() == "done\n"


@pytest.mark.parametrize(
    ("python", "message"),
    [
        ("/nonexistent/python3", "cannot start the job launcher /nonexistent/python3"),
        ("/bin/false", "the job launcher exited without answering"),
    ],
)
def test_a_launcher_that_cannot_start_fails_the_launch_clearly(fresh_server: Server, python: str,
                                                               message: str) -> None:
    fresh_server.config_text = f'[local]\nsupervisor_python = "{python}"\n'
    server = fresh_server.start()
    token = server.token("root", "super-admin")
    body = server.post("launch_job", token, job={"name": "doomed", "exe": "/bin/true"}).json()
    assert body["error"]["code"] == 5 and message in body["error"]["message"], body
    jobs = server.rpc("get_session", token, include_all_jobs=True)["jobs"]
    assert [(j["name"], j["status"]) for j in jobs] == [("doomed", "Failed")]
