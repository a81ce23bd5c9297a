"""Session lifecycles that need their own server settings: idle handling and start failures."""

from __future__ import annotations

import pwd
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.sessions_helpers import kernel_round_trip, launch, session, session_server, wait_state

pytestmark = pytest.mark.skipif(not Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists(),
                                reason="IDEs not installed: run scripts/install-ides.sh (make test does)")

# JupyterLab's 12 s leaves a loaded machine time to start the busy session's kernel before it is idle; the
# suspended session so waits 12 s, the stopped Notebook 3 s.
IDLE = """idle_check_interval_s = 0.5
[ides.JupyterLab]
idle_timeout_minutes = 0.2
[ides."Jupyter Notebook"]
idle_timeout_minutes = 0.05
suspend_on_idle = false
"""


@pytest.fixture
def idle_server(tmp_path: Path) -> Iterator[Server]:
    with session_server(tmp_path / "data", IDLE) as server:
        yield server


def test_idle_sessions_are_suspended_or_stopped_but_a_busy_kernel_is_not_idle(
    idle_server: Server, posix_user: pwd.struct_passwd
) -> None:
    token = idle_server.token(posix_user.pw_name)
    busy = launch(idle_server, token, "JupyterLab")
    idle = launch(idle_server, token, "JupyterLab")
    stopped = launch(idle_server, token, "Jupyter Notebook")
    wait_state(idle_server, token, busy["id"], ("running",))
    result: list[str] = []
    # The kernel is put to work as soon as its session runs (not after the others start: it would be idle
    # meanwhile), and stays busy until the test says so (a file appears), however long the other sessions take
    # on a loaded machine: a fixed sleep could end first, and the busy session then be idle.
    wake = Path("/tmp") / f"owb-wake-{secrets.token_hex(4)}"
    code = f"import os, time\nwhile not os.path.exists({str(wake)!r}): time.sleep(0.1)\n'woke'"
    worker = threading.Thread(target=lambda: result.append(
        kernel_round_trip(idle_server.url + busy["url"], token, code, timeout=180)))
    worker.start()
    try:
        # Each started (and may have reached its idle end already by the time it is read).
        wait_state(idle_server, token, idle["id"], ("running", "suspended"), timeout=120)
        wait_state(idle_server, token, stopped["id"], ("running", "finished"), timeout=120)
        assert wait_state(idle_server, token, idle["id"], ("suspended",), timeout=60)["suspend_size"] > 0
        assert wait_state(idle_server, token, stopped["id"], ("finished",), timeout=60)["activity_state"] == "finished"
        during = session(idle_server, token, busy["id"])
        assert during["activity_state"] == "running" and during["executing"] is True  # busy kernel, no browser
    finally:
        wake.touch()
    worker.join(timeout=60)
    wake.unlink()
    assert result == ["'woke'"]
    after = wait_state(idle_server, token, busy["id"], ("suspended",), timeout=30)
    assert after["executing"] is False


def test_proxy_traffic_updates_last_used(idle_server: Server, posix_user: pwd.struct_passwd) -> None:
    token = idle_server.token(posix_user.pw_name)
    started = launch(idle_server, token, "VS Code")  # no idle timeout configured for VS Code
    before = wait_state(idle_server, token, started["id"], ("running",))["last_used"]
    time.sleep(0.05)
    assert httpx.get(idle_server.url + started["url"] + "healthz",
                     headers={"Authorization": f"Bearer {token}"}).status_code == 200
    deadline = time.monotonic() + 60
    while session(idle_server, token, started["id"])["last_used"] <= before:
        assert time.monotonic() < deadline, "last_used never moved"
        time.sleep(0.1)
    idle_server.rpc("stop_session", token, session_ids=started["id"], force_quit=True)
    wait_state(idle_server, token, started["id"], ("killed",))


def test_start_failures_say_why(tmp_path: Path, posix_user: pwd.struct_passwd) -> None:
    # Failures injected through configuration: an "IDE" that never opens its socket, and one that
    # exits at once on a bad flag.
    silent = Path("/tmp") / f"owb-silent-{posix_user.pw_name}.sh"
    silent.write_text("#!/bin/sh\nexec sleep 600\n")
    silent.chmod(0o755)
    extra = f'[ides."Jupyter Notebook"]\nexe = "{silent}"\n[ides."VS Code"]\nargs = ["--no-such-flag"]\n'
    try:
        with session_server(tmp_path / "data", extra, start_timeout_s=3) as server:
            token = server.token(posix_user.pw_name)
            never = launch(server, token, "Jupyter Notebook")
            broken = launch(server, token, "VS Code")
            timed_out = wait_state(server, token, never["id"], ("failed",), timeout=30)
            assert timed_out["status_detail"] == "start timeout: the IDE did not answer within 3 s"
            exited = wait_state(server, token, broken["id"], ("failed",), timeout=30)
            assert "ended before it was ready" in exited["status_detail"] and "exit code" in exited["status_detail"]
            jobs = server.rpc("get_session", token, session_id=never["id"], include_jobs=True)["jobs"]
            assert jobs[0]["status"] == "Killed"  # the silent IDE was not left running
    finally:
        silent.unlink()


def test_a_hung_hook_is_killed_after_hook_timeout_s(tmp_path: Path, posix_user: pwd.struct_passwd) -> None:
    hung = Path(posix_user.pw_dir) / "hung-hook.sh"
    hung.write_text("#!/bin/sh\necho hanging-hook-$1\nexec sleep 600\n")
    hung.chmod(0o755)
    with session_server(tmp_path / "data", "hook_timeout_s = 1\n") as server:
        token = server.token(posix_user.pw_name)
        bad = launch(server, token, "JupyterLab", start_hooks=[{"exe": str(hung)}])
        failed = wait_state(server, token, bad["id"], ("failed",), timeout=30)
        assert "start hook" in failed["status_detail"] and "did not finish within 1 s" in failed["status_detail"]
        # A hung stop hook (it would sleep 600 s) delays the stop by the limit, not forever.
        ok = launch(server, token, "JupyterLab", stop_hooks=[{"exe": str(hung)}])
        wait_state(server, token, ok["id"], ("running",))
        server.rpc("stop_session", token, session_ids=ok["id"])
        assert wait_state(server, token, ok["id"], ("finished",), timeout=120)["activity_state"] == "finished"
        hooks = [job for job in server.rpc("get_session", token, include_all_jobs=True)["jobs"]
                 if job["tags"] != ["session"]]
        assert len(hooks) == 2 and {job["status"] for job in hooks} <= {"Killed", "Failed"}
    leftover = subprocess.run(["pgrep", "-u", posix_user.pw_name, "-f", "sleep 600"], capture_output=True)
    assert leftover.stdout == b""  # the hooks' processes are gone


@pytest.fixture
def stand_in_server(tmp_path: Path) -> Iterator[Server]:
    """A server whose JupyterLab never answers: its sessions stay `starting` (the hooks and restarts below do
    not depend on the IDE)."""
    stand_in = Path("/tmp") / f"owb-stand-in-ide-{tmp_path.name[-8:]}.sh"
    stand_in.write_text("#!/bin/sh\nexec sleep 600\n")
    stand_in.chmod(0o755)
    try:
        with session_server(tmp_path / "data", f'[ides."JupyterLab"]\nexe = "{stand_in}"\n',
                            start_timeout_s=3600) as server:
            yield server
    finally:
        stand_in.unlink()


def user_script(user: pwd.struct_passwd, name: str, body: str) -> Path:
    script = Path(user.pw_dir) / name
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def test_stop_hooks_run_with_force_quit(stand_in_server: Server, posix_user: pwd.struct_passwd) -> None:
    marker = Path(posix_user.pw_dir) / f"stop-hook-ran-{time.monotonic_ns()}"
    hook = user_script(posix_user, "stop-hook.sh", f"id -un > {marker}")
    token = stand_in_server.token(posix_user.pw_name)
    started = launch(stand_in_server, token, "JupyterLab", stop_hooks=[{"exe": str(hook)}])
    wait_state(stand_in_server, token, started["id"], ("starting",))
    stand_in_server.rpc("stop_session", token, session_ids=started["id"], force_quit=True)
    assert wait_state(stand_in_server, token, started["id"], ("killed",))["activity_state"] == "killed"
    assert marker.read_text() == f"{posix_user.pw_name}\n"  # it ran, as the session's user
    jobs = stand_in_server.rpc("get_session", token, session_id=started["id"], include_jobs=True)["jobs"]
    hooks = [job for job in jobs if job["tags"] == ["stop_hook"]]
    assert [(job["name"], job["status"], job["exitCode"]) for job in hooks] == [
        (f"stop hook: {hook}", "Finished", 0)]


def test_a_restart_while_a_session_launches_fails_it_with_the_reason(stand_in_server: Server,
                                                                   posix_user: pwd.struct_passwd) -> None:
    release = Path(posix_user.pw_dir) / f"release-{time.monotonic_ns()}"
    hook = user_script(posix_user, "slow-start-hook.sh", f"while [ ! -e {release} ]; do sleep 0.05; done")
    token = stand_in_server.token(posix_user.pw_name)
    started = launch(stand_in_server, token, "JupyterLab", start_hooks=[{"exe": str(hook)}])
    try:
        deadline = time.monotonic() + 60
        while session(stand_in_server, token, started["id"])["activity_state"] != "launching" or not [
                job for job in stand_in_server.rpc("get_session", token, session_id=started["id"],
                                                   include_jobs=True)["jobs"] if job["status"] == "Running"]:
            assert time.monotonic() < deadline, "the start hook never ran"
            time.sleep(0.1)
        stand_in_server.stop(signal.SIGKILL)  # killed while the session is `launching`, in its start hook
        stand_in_server.start()
        failed = wait_state(stand_in_server, token, started["id"], ("failed",), timeout=60)
        assert failed["status_detail"] == "the server restarted while it launched"
    finally:
        release.touch()
    jobs = stand_in_server.rpc("get_session", token, session_id=started["id"], include_jobs=True)["jobs"]
    assert [job["tags"] for job in jobs] == [["start_hook"]]  # the IDE's job was never submitted
