"""Tests for the per-job supervisor, run exactly as the server runs it: real processes, no fakes."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import remove_posix_user

CLUSTERS = Path(__file__).resolve().parents[1] / "src" / "openworkbench" / "clusters"
SUPERVISOR = CLUSTERS / "supervisor.py"
SYSTEM_PYTHON = "/usr/bin/python3"
CGROUP_ROOT = "/sys/fs/cgroup"
FINAL = {"Finished", "Killed", "Failed", "Canceled"}


def load_script(name: str, module_name: str) -> ModuleType:
    """Load by path: the supervisor is a standalone script, and this keeps the test independent of the
    package's __init__ files."""
    spec = importlib.util.spec_from_file_location(module_name, CLUSTERS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


cgroups = load_script("supervisor_cgroups", "supervisor_cgroups")  # the name supervisor.py imports it by
sup = load_script("supervisor", "owb_supervisor")

IS_ROOT = os.geteuid() == 0
CGROUPS_OK = IS_ROOT and all(os.access(f"{CGROUP_ROOT}/{c}", os.W_OK) for c in ("memory", "cpu", "pids"))
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
needs_cgroups = pytest.mark.skipif(not CGROUPS_OK, reason="needs writable cgroup v1 controllers")


class Run:
    """A supervisor started the way the server starts it."""

    def __init__(self, job_dir: Path, proc: subprocess.Popen[bytes]) -> None:
        self.job_dir = job_dir
        self.proc = proc

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.job_dir / "state.json").read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state is not None and pred(state):
                return state
            time.sleep(0.02)
        log = (self.job_dir / "supervisor.log").read_text(errors="replace")
        raise AssertionError(f"timed out; state={self.state()} log={log!r}")

    def wait_running(self) -> dict[str, Any]:
        return self.wait_for(lambda s: s["status"] == "Running")

    def wait_final(self) -> dict[str, Any]:
        state = self.wait_for(lambda s: s["status"] in FINAL)
        assert self.proc.wait(timeout=10) == 0
        return state

    def read(self, name: str) -> str:
        return (self.job_dir / name).read_text()


def make_spec(job_dir: Path, argv: list[str], **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "argv": argv,
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"},
        "cwd": "/tmp",
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": [os.getgid()],
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "stdout": str(job_dir / "stdout"),
        "stderr": str(job_dir / "stderr"),
        "stdin": "",
        "limits": {"memory_mb": None, "cpu_count": None, "cpu_time_s": None},
        "cgroup_root": None,
        "cgroup_name": f"owb-test-{secrets.token_hex(4)}/{job_dir.name}",
    }
    spec.update(overrides)
    return spec


def launch(job_dir: Path, spec: dict[str, Any] | None, **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    if spec is not None:
        (job_dir / "spec.json").write_text(json.dumps(spec))
    with open(job_dir / "supervisor.log", "wb") as log:
        return subprocess.Popen(
            [SYSTEM_PYTHON, str(popen_kwargs.pop("script", SUPERVISOR)), str(job_dir)],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            **popen_kwargs,
        )


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []
    cgroup_parents: set[str] = set()

    def start(argv: list[str], **overrides: Any) -> Run:
        job_dir = tmp_path / f"job{len(runs)}"
        job_dir.mkdir()
        spec = make_spec(job_dir, argv, **overrides)
        cgroup_parents.add(spec["cgroup_name"].split("/")[0])
        run = Run(job_dir, launch(job_dir, spec))
        runs.append(run)
        return run

    yield start
    for run in runs:  # never leave a job or supervisor behind, even when a test failed
        state = run.state() or {}
        if state.get("status") == "Running":
            with contextlib.suppress(OSError):
                os.killpg(state["pgid"], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(timeout=10)
    for parent in cgroup_parents:
        for controller in ("memory", "cpu", "pids"):
            with contextlib.suppress(OSError):
                os.rmdir(f"{CGROUP_ROOT}/{controller}/{parent}")


def lock_is_held(job_dir: Path) -> bool:
    fd = os.open(job_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# ----------------------------------------------------------------------------- pure functions


def exited(code: int) -> int:
    return code << 8


LIMITS_NONE = {"memory_mb": None, "cpu_count": None, "cpu_time_s": None}


@pytest.mark.parametrize(
    ("status", "cpu", "limits", "oom", "expected"),
    [
        (exited(0), 0.1, LIMITS_NONE, False, ("Finished", 0, "")),
        (exited(3), 0.1, LIMITS_NONE, False, ("Finished", 3, "")),
        (
            exited(137),
            0.1,
            {"memory_mb": 32},
            True,
            ("Finished", 137, "A process of the job was killed: exceeded the memory limit of 32 MB"),
        ),
        (signal.SIGTERM, 0.1, LIMITS_NONE, False, ("Finished", 143, "Terminated by SIGTERM")),
        (signal.SIGSEGV, 0.1, LIMITS_NONE, False, ("Finished", 139, "Terminated by SIGSEGV")),
        (signal.SIGKILL, 0.1, LIMITS_NONE, False, ("Killed", 137, "Killed by SIGKILL")),
        (signal.SIGKILL, 0.1, LIMITS_NONE, True, ("Killed", 137, "Killed by SIGKILL")),
        (
            signal.SIGKILL,
            0.1,
            {"memory_mb": 32},
            True,
            ("Killed", 137, "Killed: exceeded its memory limit of 32 MB"),
        ),
        (
            signal.SIGXCPU,
            1.0,
            {"cpu_time_s": 1},
            False,
            ("Killed", 152, "Killed: exceeded its CPU time limit of 1 s"),
        ),
        (
            signal.SIGKILL,
            6.0,
            {"cpu_time_s": 1},
            False,
            ("Killed", 137, "Killed: exceeded its CPU time limit of 1 s"),
        ),
        (signal.SIGKILL, 0.5, {"cpu_time_s": 1}, False, ("Killed", 137, "Killed by SIGKILL")),
        (signal.SIGXCPU, 0.5, LIMITS_NONE, False, ("Finished", 152, "Terminated by SIGXCPU")),
    ],
)
def test_final_state(status: int, cpu: float, limits: dict[str, Any], oom: bool, expected: tuple[Any, ...]) -> None:
    state = sup.final_state(status, cpu, limits, oom)
    assert (state["status"], state["exitCode"], state["statusMessage"]) == expected
    assert state["signal"] == (None if os.WIFEXITED(status) else status)


def test_read_oom_kills(tmp_path: Path) -> None:
    path = tmp_path / "memory.oom_control"
    path.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroups.read_oom_kills(str(path)) == 2
    path.write_text("oom_kill_disable 0\nunder_oom 0\n")
    assert cgroups.read_oom_kills(str(path)) == 0
    assert cgroups.read_oom_kills(str(tmp_path / "missing")) == 0


def test_memory_oom_killed_prefers_exact_counter(tmp_path: Path) -> None:
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (tmp_path / "memory.failcnt").write_text("12\n")
    (tmp_path / "memory.memsw.failcnt").write_text("3\n")
    assert not cgroups.memory_oom_killed(str(tmp_path))  # hitting the limit is not an OOM kill
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")  # old kernel
    assert cgroups.memory_oom_killed(str(tmp_path))


def test_exec_failure_message() -> None:
    assert sup.exec_failure_message("x", "/w", "exec:No such file or directory") == (
        "Could not start x: No such file or directory"
    )
    assert sup.exec_failure_message("x", "/w", "chdir:Permission denied") == (
        "Could not start x: Could not change to working directory /w: Permission denied"
    )
    assert sup.exec_failure_message("x", "/w", "setuid:Operation not permitted") == (
        "Could not start x: setuid failed: Operation not permitted"
    )


# ----------------------------------------------------------------------------- real processes


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_and_output_files(runner: Callable[..., Run], code: int) -> None:
    run = runner(["/bin/sh", "-c", f"echo out; echo err >&2; cat; exit {code}"], stdin="fed\nlines\n")
    state = run.wait_final()
    assert state["status"] == "Finished"
    assert state["exitCode"] == code
    assert state["statusMessage"] == ""
    assert state["signal"] is None
    assert state["pid"] == state["pgid"] and isinstance(state["pid"], int)
    assert state["startTime"].endswith("Z") and state["endTime"].endswith("Z")
    assert isinstance(state["maxRssKb"], int)
    assert run.read("stdout") == "out\nfed\nlines\n"
    assert run.read("stderr") == "err\n"
    for name in ("stdout", "stderr"):  # sealed once the job has ended: read-only (root's, when run as root)
        assert (run.job_dir / name).stat().st_mode & 0o777 == 0o440
    assert json.loads(run.read("lock"))["supervisorPid"] == run.proc.pid


def test_empty_stdin_is_dev_null_and_path_lookup_uses_spec_env(runner: Callable[..., Run], tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "owb-hello"
    script.write_text('#!/bin/sh\ncat\necho "hello $1 from $PWD"\n')
    script.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    run = runner(["owb-hello", "world"], env=env, cwd="/")
    state = run.wait_final()
    assert state["status"] == "Finished" and state["exitCode"] == 0
    assert run.read("stdout") == "hello world from /\n"  # cat got EOF at once from /dev/null


@pytest.mark.parametrize(("argv", "expected"), [(["wc", "-c"], "1048576"), (["/bin/true"], "")])
def test_large_stdin_never_blocks_supervisor(runner: Callable[..., Run], argv: list[str], expected: str) -> None:
    run = runner(argv, stdin="x" * 1024 * 1024)  # far above the 64 KiB pipe buffer
    state = run.wait_final()
    assert (state["status"], state["exitCode"]) == ("Finished", 0)
    assert run.read("stdout").strip() == expected


def test_missing_executable_fails(runner: Callable[..., Run]) -> None:
    state = runner(["/nonexistent/owb-prog", "x"]).wait_final()
    assert state["status"] == "Failed"
    assert state["statusMessage"] == "Could not start /nonexistent/owb-prog: No such file or directory"
    assert state["exitCode"] is None and state["pid"] is None


def test_bad_cwd_fails(runner: Callable[..., Run]) -> None:
    state = runner(["/bin/true"], cwd="/nonexistent-owb-dir").wait_final()
    assert state["status"] == "Failed"
    assert "Could not change to working directory /nonexistent-owb-dir" in state["statusMessage"]
    assert state["exitCode"] is None


def test_cancel_file_before_start_cancels_without_running(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    marker = tmp_path / "ran"
    (job_dir / "cancel").write_text("SIGTERM")
    run = Run(job_dir, launch(job_dir, make_spec(job_dir, ["/usr/bin/touch", str(marker)])))
    state = run.wait_final()
    assert (state["status"], state["statusMessage"]) == ("Canceled", "Canceled before it started")
    assert not marker.exists()


def test_invalid_spec_still_writes_final_state(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "spec.json").write_text("{not json")
    run = Run(job_dir, launch(job_dir, None))
    state = run.wait_final()
    assert state["status"] == "Failed"
    assert state["statusMessage"].startswith("Supervisor error:")


def test_lock_held_while_running_and_sigterm_to_group(runner: Callable[..., Run]) -> None:
    run = runner(["sleep", "30"])
    running = run.wait_running()
    assert running["pid"] == running["pgid"]
    assert os.getpgid(running["pid"]) == running["pid"]
    assert lock_is_held(run.job_dir)
    os.killpg(running["pgid"], signal.SIGTERM)
    state = run.wait_final()
    assert (state["status"], state["exitCode"]) == ("Finished", 143)
    assert state["statusMessage"] == "Terminated by SIGTERM"
    assert state["signal"] == signal.SIGTERM
    assert not lock_is_held(run.job_dir)


def test_sigkill_is_killed(runner: Callable[..., Run]) -> None:
    run = runner(["sleep", "30"])
    os.killpg(run.wait_running()["pgid"], signal.SIGKILL)
    state = run.wait_final()
    assert (state["status"], state["exitCode"], state["statusMessage"]) == ("Killed", 137, "Killed by SIGKILL")


def test_process_group_leftovers_are_killed(runner: Callable[..., Run]) -> None:
    run = runner(["/bin/sh", "-c", "sleep 60 & echo $!; exit 0"])
    state = run.wait_final()
    assert state["exitCode"] == 0
    assert not _alive(int(run.read("stdout")))


@needs_cgroups
def test_memory_limit_kills_and_cgroup_is_removed(runner: Callable[..., Run]) -> None:
    hog = "b = b'x' * (200 * 1024 * 1024); import time; time.sleep(1)"  # b'x' * n touches every page
    limits = {"memory_mb": 32, "cpu_count": None, "cpu_time_s": None}
    run = runner([SYSTEM_PYTHON, "-c", hog], limits=limits, cgroup_root=CGROUP_ROOT)
    state = run.wait_final()
    assert (state["status"], state["exitCode"]) == ("Killed", 137)
    assert state["statusMessage"] == "Killed: exceeded its memory limit of 32 MB"
    name = json.loads(run.read("spec.json"))["cgroup_name"]
    for controller in ("memory", "pids"):
        assert not os.path.exists(f"{CGROUP_ROOT}/{controller}/{name}")


@needs_cgroups
def test_cgroup_limits_applied_and_leftovers_killed(runner: Callable[..., Run]) -> None:
    limits = {"memory_mb": 64, "cpu_count": 1.5, "cpu_time_s": None}
    script = "setsid sleep 60 & echo $!; cat /proc/self/cgroup; sleep 0.3"
    run = runner(["/bin/sh", "-c", script], limits=limits, cgroup_root=CGROUP_ROOT)
    run.wait_running()
    name = json.loads(run.read("spec.json"))["cgroup_name"]
    mem = Path(CGROUP_ROOT, "memory", name)
    assert (mem / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
    if (mem / "memory.memsw.limit_in_bytes").exists():
        assert (mem / "memory.memsw.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
    assert Path(CGROUP_ROOT, "cpu", name, "cpu.cfs_quota_us").read_text().strip() == "150000"
    state = run.wait_final()
    assert state["exitCode"] == 0 and state["notes"] == []
    lines = run.read("stdout").splitlines()
    cgroups = {line.split(":", 1)[1] for line in lines[1:]}  # "N:controller:/path"
    assert {f"memory:/{name}", f"pids:/{name}", f"cpu:/{name}"} <= cgroups
    assert not _alive(int(lines[0]))  # escaped the process group (setsid) but not the cgroup
    assert not Path(CGROUP_ROOT, "cpu", name).exists()


def test_cpu_time_limit(runner: Callable[..., Run]) -> None:
    limits = {"memory_mb": None, "cpu_count": None, "cpu_time_s": 1}
    state = runner([SYSTEM_PYTHON, "-c", "while True: pass"], limits=limits).wait_final()
    assert state["status"] == "Killed"
    assert state["exitCode"] in (128 + signal.SIGXCPU, 137)
    assert state["statusMessage"] == "Killed: exceeded its CPU time limit of 1 s"
    # rusage may read slightly below the limit at SIGXCPU (seen: 0.984 s), hence no ">= 1.0" here.
    assert state["cpuTimeS"] >= 0.8


def test_survives_death_of_starter(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "spec.json").write_text(json.dumps(make_spec(job_dir, ["/bin/sh", "-c", "sleep 0.5; exit 7"])))
    starter = (
        "import subprocess, sys\n"
        "log = open(sys.argv[3] + '/supervisor.log', 'wb')\n"
        "subprocess.Popen([sys.argv[1], sys.argv[2], sys.argv[3]], start_new_session=True,\n"
        "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)\n"
    )
    subprocess.run([SYSTEM_PYTHON, "-c", starter, SYSTEM_PYTHON, str(SUPERVISOR), str(job_dir)], check=True)
    run = Run(job_dir, None)  # type: ignore[arg-type]  # not our child: poll files only
    running = run.wait_running()
    sup_pid = json.loads(run.read("lock"))["supervisorPid"]
    assert os.getsid(sup_pid) == sup_pid  # own session: immune to the starter's session ending
    assert os.getpgid(running["pid"]) == running["pid"] != sup_pid
    state = run.wait_for(lambda s: s["status"] in FINAL)
    assert (state["status"], state["exitCode"]) == ("Finished", 7)
    deadline = time.monotonic() + 10
    while lock_is_held(job_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not lock_is_held(job_dir)


# ----------------------------------------------------------------------------- other users


@pytest.fixture(scope="module")
def test_user() -> Iterator[pwd.struct_passwd]:
    if not IS_ROOT or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    name = f"owb-test-{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        remove_posix_user(name, with_home=False)


@needs_root
def test_job_runs_as_other_user(runner: Callable[..., Run], test_user: pwd.struct_passwd) -> None:
    uid, gid = test_user.pw_uid, test_user.pw_gid
    run = runner(
        ["/bin/sh", "-c", "id -u; id -g; id -G"],
        uid=uid,
        gid=gid,
        groups=[gid],
        user=test_user.pw_name,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": "/", "USER": test_user.pw_name},
    )
    state = run.wait_final()
    assert (state["status"], state["exitCode"]) == ("Finished", 0), run.read("stderr")
    assert run.read("stdout").split("\n")[:3] == [str(uid), str(gid), str(gid)]
    st = (run.job_dir / "stdout").stat()  # written as the user; root's and read-only once the job has ended
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, gid, 0o440)


@needs_root
def test_unprivileged_supervisor_skips_cgroups_with_note(test_user: pwd.struct_passwd) -> None:
    uid, gid = test_user.pw_uid, test_user.pw_gid
    job_dir = Path(tempfile.mkdtemp(prefix="owb-test-job-"))  # pytest's tmp dirs are root-only
    try:
        os.chown(job_dir, uid, gid)
        script = job_dir / "supervisor.py"
        shutil.copy(SUPERVISOR, script)
        shutil.copy(CLUSTERS / "supervisor_cgroups.py", job_dir)  # its sibling module
        spec = make_spec(
            job_dir,
            ["/bin/sh", "-c", "id -u"],
            uid=uid,
            gid=gid,
            groups=[gid],
            cwd="/",
            limits={"memory_mb": 64, "cpu_count": None, "cpu_time_s": None},
            cgroup_root=CGROUP_ROOT,
        )
        proc = launch(job_dir, spec, script=script, user=uid, group=gid, extra_groups=[])
        run = Run(job_dir, proc)
        state = run.wait_final()
        assert (state["status"], state["exitCode"]) == ("Finished", 0), state
        assert run.read("stdout").strip() == str(uid)
        assert any("not writable" in note for note in state["notes"])
        assert (job_dir / "stdout").stat().st_uid == uid
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False
