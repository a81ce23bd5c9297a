"""Issue 9, the file-system attacks, done for real by a local user against a real root server.

1: the runtime dir taken over before the server starts; 7: helpers, hooks, jobs and IDEs inheriting the
server's environment; 11: suspend_size walking a planted symlink, open_file checked as root, output files
rewritable after the job ended. The last test lists the call sites that must go through safefs.
"""

from __future__ import annotations

import ast
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openworkbench.clusters.base import Account
from openworkbench.sessions import files as session_files
from tests.conftest import Server, temporary_posix_user
from tests.sessions_helpers import launch, session, session_config, wait_state
from tests.test_jobs import output_text

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks need root and real POSIX users")
IDES = Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists()
needs_ides = pytest.mark.skipif(not IDES, reason="IDEs not installed: run scripts/install-ides.sh")
MARKER = "OWB_SECRET_MARKER"
SRC = Path(__file__).resolve().parents[1] / "src" / "openworkbench"


def as_user(user: pwd.struct_passwd, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a shell script as ``user``: what she can do from her own shell account."""
    argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
            "/bin/sh", "-c", script]
    env = {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(argv, capture_output=True, text=True, check=check, env=env, cwd="/")


def account(user: pwd.struct_passwd) -> Account:
    return Account(user.pw_name, user.pw_uid, user.pw_gid, (user.pw_gid,), user.pw_dir, user.pw_shell)


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


@pytest.fixture(scope="module")
def alice() -> Iterator[pwd.struct_passwd]:
    with temporary_posix_user("owbalice") as user:
        yield user


@pytest.fixture(scope="module")
def bob() -> Iterator[pwd.struct_passwd]:
    with temporary_posix_user("owbbob") as user:
        yield user


@pytest.fixture(scope="module")
def root_secret() -> Iterator[Path]:
    """A root-only directory (0700 in /root) holding 3 MB: what a user must learn nothing about."""
    path = Path("/root") / f"owb-secret-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    (path / "big").write_bytes(b"x" * 3_000_000)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose own environment holds a secret and HOME=/root, as a root service's would."""
    runtime = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    saved = {key: os.environ.get(key) for key in (MARKER, "HOME")}
    os.environ.update({MARKER: "server-only-secret", "HOME": "/root"})
    try:
        server = Server(tmp_path_factory.mktemp("fsafe") / "data", config_text=session_config(runtime)).start()
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    yield server
    server.stop()
    shutil.rmtree(runtime, ignore_errors=True)


def settle(srv: Server, token: str, session_id: str, states: tuple[str, ...]) -> None:
    """Wait for one of ``states``, passing any other (a suspended session stays so until the stop is seen)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if session(srv, token, session_id)["activity_state"] in states:
            return
        time.sleep(0.1)
    raise AssertionError(f"session {session_id} never reached {states}")


def still_serves_others(srv: Server, bob: pwd.struct_passwd) -> None:
    """Another user's get_session answers: the attack took nothing down."""
    assert srv.rpc("get_session", srv.token(bob.pw_name))["sessions"] == []


# -- 1: runtime dir takeover ---------------------------------------------------------------------------


@pytest.mark.parametrize("planted", ["hers, with <uid> a symlink", "a symlink", "root's but world-writable"])
def test_a_planted_runtime_dir_stops_the_server_and_changes_nothing(
        tmp_path: Path, alice: pwd.struct_passwd, bob: pwd.struct_passwd, planted: str) -> None:
    victim = tmp_path / "victim"  # a root-owned directory she wants
    victim.mkdir(mode=0o711)
    before = owner_and_mode(victim)
    runtime = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    try:
        if planted == "hers, with <uid> a symlink":  # exactly the attack
            as_user(alice, f"mkdir -m 755 {runtime} && ln -s {victim} {runtime}/{alice.pw_uid}")
        elif planted == "a symlink":
            as_user(alice, f"ln -s {victim} {runtime}")
        else:
            runtime.mkdir()
            runtime.chmod(0o777)
        server = Server(tmp_path / "data", config_text=session_config(runtime))
        with pytest.raises(RuntimeError, match="server exited"):
            server.start()
        assert f"config key 'sessions.runtime_dir': {runtime}" in server.log()
        assert owner_and_mode(victim) == before
        # Once the operator has removed it, the server makes its own, and another user is served.
        subprocess.run(["rm", "-rf", "--", str(runtime)], check=True)
        server.start()
        try:
            assert owner_and_mode(runtime) == (0, 0, 0o755)
            still_serves_others(server, bob)
        finally:
            server.stop()
        assert owner_and_mode(victim) == before
    finally:
        subprocess.run(["rm", "-rf", "--", str(runtime)], check=False)


@needs_ides
def test_the_user_directory_is_made_through_file_descriptors(
        srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd) -> None:
    runtime = Path(next(line.split('"')[1] for line in srv.config_text.splitlines()
                        if line.startswith("runtime_dir")))
    assert owner_and_mode(runtime) == (0, 0, 0o755)  # made at start-up, before any launch
    token = srv.token(alice.pw_name)
    started = launch(srv, token, "JupyterLab")
    wait_state(srv, token, started["id"], ("running",))
    assert owner_and_mode(runtime / str(alice.pw_uid)) == (alice.pw_uid, alice.pw_gid, 0o700)
    # She cannot swap her directory for a link: the runtime dir is not hers to write.
    assert as_user(alice, f"mv {runtime}/{alice.pw_uid} {runtime}/x", check=False).returncode != 0
    srv.rpc("stop_session", token, session_ids=started["id"], force_quit=True)
    wait_state(srv, token, started["id"], ("killed", "finished"))
    still_serves_others(srv, bob)


# -- 11: suspend_size through a planted symlink ---------------------------------------------------------


@needs_ides
def test_suspend_size_does_not_follow_a_planted_symlink(
        srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd, root_secret: Path) -> None:
    token = srv.token(alice.pw_name)
    started = launch(srv, token, "JupyterLab")
    wait_state(srv, token, started["id"], ("running",))
    state = Path(alice.pw_dir) / ".local/share/openworkbench/sessions" / started["id"]
    # Her state dir becomes a link to a directory only root can read; a link inside points there too.
    as_user(alice, f"mv {state} {state}.real && ln -s {root_secret} {state}.real/peek && ln -s {root_secret} {state}")
    srv.rpc("stop_session", token, session_ids=started["id"], suspend_session=True)
    suspended = wait_state(srv, token, started["id"], ("suspended",))
    assert suspended["suspend_size"] < 3_000_000, suspended["suspend_size"]
    still_serves_others(srv, bob)
    srv.rpc("stop_session", token, session_ids=started["id"])  # discarding it removes her link, not /root's
    settle(srv, token, started["id"], ("finished",))
    assert (root_secret / "big").stat().st_size == 3_000_000


def test_tree_size_counts_links_as_links(tmp_path: Path, root_secret: Path) -> None:
    home = tmp_path / "home"
    (home / "state" / "sub").mkdir(parents=True)
    (home / "state" / "sub" / "f").write_bytes(b"y" * 1000)
    (home / "state" / "peek").symlink_to(root_secret)
    assert session_files.tree_size(str(home / "state"), str(home)) == 1000  # not a byte of the target
    (home / "link").symlink_to(root_secret)
    (home / "deeper").symlink_to(home / "state")
    assert session_files.tree_size(str(home / "link"), str(home)) == 0
    assert session_files.tree_size(str(home / "deeper" / "sub"), str(home)) == 0  # a link on the way
    assert session_files.tree_size(str(home / "absent"), str(home)) == 0


# -- 11: open_file resolved as the user -----------------------------------------------------------------


def ide_args(srv: Server, token: str, session_id: str) -> list[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = srv.rpc("get_session", token, session_id=session_id, include_jobs=True)["jobs"]
        if jobs:
            return list(jobs[0]["args"])
        time.sleep(0.1)
    raise AssertionError("the IDE's job never appeared")


def launched_args(srv: Server, token: str, workbench: str, open_file: str) -> list[str]:
    started = launch(srv, token, workbench, open_file=open_file)
    try:
        return ide_args(srv, token, started["id"])
    finally:
        srv.rpc("stop_session", token, session_ids=started["id"], force_quit=True)
        settle(srv, token, started["id"], ("killed", "finished", "failed", "canceled"))


@needs_ides
def test_open_file_tells_nothing_about_what_the_user_cannot_read(
        srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd, root_secret: Path) -> None:
    token = srv.token(alice.pw_name)
    hidden, absent = str(root_secret), f"/root/owb-absent-{secrets.token_hex(4)}"
    # code-server opens a directory given on its command line, else the working directory.
    opened_hidden = launched_args(srv, token, "VS Code", hidden)
    opened_absent = launched_args(srv, token, "VS Code", absent)
    assert opened_hidden[-1] == opened_absent[-1] == alice.pw_dir and hidden not in opened_hidden
    # Jupyter Notebook lands on /tree/ for a directory, /edit/ for a file: through a link in her home.
    as_user(alice, f"ln -s {root_secret} ~/peek && ln -s {absent} ~/nothing && mkdir ~/mine")
    peek = [a for a in launched_args(srv, token, "Jupyter Notebook", "peek") if "default_url" in a]
    nothing = [a for a in launched_args(srv, token, "Jupyter Notebook", "nothing") if "default_url" in a]
    assert peek == [a.replace("nothing", "peek") for a in nothing] == ["--JupyterNotebookApp.default_url=/edit/peek"]
    # A directory she can read still opens as one.
    mine = [a for a in launched_args(srv, token, "Jupyter Notebook", "mine") if "default_url" in a]
    assert mine == ["--JupyterNotebookApp.default_url=/tree/mine"]
    still_serves_others(srv, bob)


# -- 11: output sealed when the job ends ----------------------------------------------------------------


def test_finished_output_cannot_be_rewritten(srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd) -> None:
    token = srv.token(alice.pw_name)
    link = Path(alice.pw_dir) / "out-link"
    # A hard link to her own stdout (through /proc), and a daemon out of the process group that keeps it open.
    script = ('ln -L /proc/self/fd/1 "$HOME/out-link"; echo original; '
              "setsid sh -c 'sleep 3; echo LATE-THROUGH-KEPT-FD' & exit 0")
    job = srv.rpc("launch_job", token, job={"name": "sealed", "command": script})["job"]
    done = srv.wait_job(token, job["id"], timeout=60)
    assert done["status"] == "Finished", done
    assert output_text(srv, token, job["id"]) == "original\n"
    assert link.exists() and os.path.samefile(link, done["stdoutFile"])
    assert owner_and_mode(Path(done["stdoutFile"])) == (0, alice.pw_gid, 0o440)
    rewrite = as_user(alice, 'echo EVIL >> "$HOME/out-link" || exit 1; echo EVIL > "$HOME/out-link"', check=False)
    assert rewrite.returncode != 0 and "Permission denied" in rewrite.stderr
    assert as_user(alice, 'chmod 666 "$HOME/out-link"', check=False).returncode != 0
    time.sleep(4)  # the daemon would have written by now: it was killed with the job
    assert output_text(srv, token, job["id"]) == "original\n"
    assert link.read_text() == "original\n"
    still_serves_others(srv, bob)


# -- 7: a clean environment for whatever runs as a user -----------------------------------------------


def environment_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def assert_clean(env: dict[str, str], user: pwd.struct_passwd) -> None:
    assert MARKER not in env, env
    assert env.get("HOME") == user.pw_dir and env.get("USER") == user.pw_name, env


def test_jobs_do_not_inherit_the_server_environment(
        srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd) -> None:
    token = srv.token(alice.pw_name)
    job = srv.rpc("launch_job", token, job={"name": "env", "exe": "/usr/bin/env"})["job"]
    srv.wait_job(token, job["id"], timeout=60)
    assert_clean(environment_of(output_text(srv, token, job["id"])), alice)
    still_serves_others(srv, bob)


@needs_ides
def test_hooks_and_ides_do_not_inherit_the_server_environment(
        srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd) -> None:
    token = srv.token(alice.pw_name)
    hook = Path(alice.pw_dir) / "hook.sh"
    as_user(alice, f'printf "#!/bin/sh\\nenv > \\"\\$HOME/hook-env\\"\\n" > {hook} && chmod 755 {hook}')
    started = launch(srv, token, "JupyterLab", start_hooks=[{"exe": str(hook)}])
    wait_state(srv, token, started["id"], ("running",))
    assert_clean(environment_of((Path(alice.pw_dir) / "hook-env").read_text()), alice)
    jobs = srv.rpc("get_session", token, session_id=started["id"], include_jobs=True)["jobs"]
    ide = next(job for job in jobs if job["status"] == "Running")
    raw = Path(f"/proc/{ide['pid']}/environ").read_bytes().decode(errors="replace")
    assert_clean(environment_of(raw.replace("\0", "\n")), alice)
    srv.rpc("stop_session", token, session_ids=started["id"], force_quit=True)
    wait_state(srv, token, started["id"], ("killed", "finished"))
    still_serves_others(srv, bob)


def test_helpers_run_as_the_user_get_a_login_environment(
        monkeypatch: pytest.MonkeyPatch, alice: pwd.struct_passwd) -> None:
    # The helpers (mkdir, write, rm -rf at stop) are short-lived: call the one function they all use,
    # from a process that has the server's kind of environment.
    monkeypatch.setenv(MARKER, "server-only-secret")
    monkeypatch.setenv("HOME", "/root")
    done = session_files.run_as(account(alice), ["/usr/bin/env"])
    assert done.returncode == 0, done.stderr
    assert_clean(environment_of(done.stdout), alice)


# -- the call sites that must go through safefs ---------------------------------------------------------

# Calls that touch the file system by path or start a process, as found in services/, sessions/, ides/ and
# clusters/. Each is allowed only for the reason given; anything new must go through
# openworkbench.safefs (or run as the user with session_files.run_as), or be added here with its reason.
# (module, enclosing function, call) -> why it is safe
ROOT_OWNED_JOB_DIR = "in the server's own 0700 jobs dir: no user can reach the path"
STDLIB_ONLY = "stdlib-only supervisor/launcher (cannot import safefs); its own O_NOFOLLOW code, root-owned dirs"
ALLOWED: dict[tuple[str, str, str], str] = {
    ("clusters/launcher.py", "check_jobs_dir", "os.lstat"): STDLIB_ONLY,
    ("clusters/launcher.py", "job_dir", "os.lstat"): STDLIB_ONLY,
    ("clusters/supervisor.py", "feed_stdin", "open"): "a pipe's fd, not a path",
    ("clusters/supervisor.py", "open_output", "os.unlink"): STDLIB_ONLY,
    ("clusters/supervisor.py", "start_child", "open"): "a pipe's fd, not a path",
    ("clusters/supervisor.py", "supervise", "open"): STDLIB_ONLY,
    ("clusters/supervisor.py", "supervise", "os.path.exists"): STDLIB_ONLY,
    ("clusters/supervisor.py", "write_json_atomic", "os.replace"): STDLIB_ONLY,
    ("clusters/supervisor_cgroups.py", "_empty", "open"): "cgroupfs, root's",
    ("clusters/supervisor_cgroups.py", "cleanup_cgroups", "os.path.isdir"): "cgroupfs, root's",
    ("clusters/supervisor_cgroups.py", "configure_controller", "os.makedirs"): "cgroupfs, root's",
    ("clusters/supervisor_cgroups.py", "configure_controller", "os.path.exists"): "cgroupfs, root's",
    ("clusters/supervisor_cgroups.py", "live_pids", "open"): "cgroupfs and /proc, root's",
    ("clusters/supervisor_cgroups.py", "read_counter", "open"): "cgroupfs, root's",
    ("clusters/supervisor_cgroups.py", "remove_dir", "os.rmdir"): "cgroupfs, root's",
    ("clusters/supervisor_cgroups.py", "write_cg", "open"): "cgroupfs, root's",
    ("clusters/local.py", "_check_supervisor", ".exists"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_located", ".read_text"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_log_tail", ".read_text"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_lost", ".read_text"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_read_state", ".read_text"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_read_state", ".stat"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_running", "open"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_running", "subprocess.Popen"): "the launcher runs as root, not as a user",
    ("clusters/local.py", "_running_pgid", ".read_text"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_write_json", "os.replace"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "_write_json", ".write_text"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "stop", ".write_text"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "stop", ".exists"): ROOT_OWNED_JOB_DIR,
    ("clusters/local.py", "submit", ".mkdir"): ROOT_OWNED_JOB_DIR,
    ("clusters/slurm/cluster.py", "__init__", "os.path.isfile"): "the operator's slurm.conf",
    ("clusters/slurm/commands.py", "run", "subprocess.run"): "env= given: login_environment when as a user",
    ("clusters/slurm/files.py", "make_job_dir", "os.makedirs"): "the operator's output_dir itself",
    ("clusters/slurm/files.py", "make_job_dir", "os.path.isdir"): "the operator's output_dir itself",
    ("clusters/slurm/files.py", "read_text", "open"): "the server's slurm_job_id in its 0711 job dir",
    ("clusters/slurm/files.py", "write_private", "os.replace"): "a fresh O_EXCL name in the server's job dir",
    ("clusters/slurm/files.py", "write_private", ".chown"): "Owner.chown: fchown of the fd just opened O_EXCL",
    ("services/container.py", "open_store", ".chmod"): "the operator's data dir",
    ("services/container.py", "open_store", ".mkdir"): "the operator's data dir",
    ("services/run_as.py", "read_uid_min", ".read_text"): "/etc/login.defs, root's",
    ("sessions/files.py", "run_as", "subprocess.run"): "env=login_environment(account)",
}
WATCHED = {"os.chown", "os.chmod", "os.lchown", "os.walk", "os.fwalk", "shutil.rmtree", "os.makedirs", "os.mkdir",
           "os.unlink", "os.remove", "os.rmdir", "os.rename", "os.replace", "os.symlink", "os.link", "os.stat",
           "os.lstat", "os.path.exists", "os.path.lexists", "os.path.isdir", "os.path.isfile", "os.path.getsize",
           "os.listdir", "os.scandir", "subprocess.run", "subprocess.Popen", "subprocess.check_output",
           "subprocess.call", "os.system", "os.execv", "os.execve", "open"}
WATCHED_METHODS = {".mkdir", ".chmod", ".chown", ".unlink", ".rmdir", ".write_text", ".write_bytes", ".read_text",
                   ".read_bytes", ".exists", ".is_dir", ".is_file", ".stat", ".lstat", ".iterdir", ".rglob"}


def file_system_calls() -> set[tuple[str, str, str]]:
    found = set()
    for area in ("services", "sessions", "ides", "clusters"):
        for path in sorted((SRC / area).rglob("*.py")):
            module = str(path.relative_to(SRC))
            for func in ast.walk(ast.parse(path.read_text())):
                if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(func):
                    if not isinstance(node, ast.Call):
                        continue
                    name = ast.unparse(node.func)
                    method = "." + name.rsplit(".", 1)[-1]
                    if name in WATCHED:
                        found.add((module, func.name, name))
                    elif "." in name and method in WATCHED_METHODS and not name.startswith(("paths.", "files.")):
                        found.add((module, func.name, method))
    return found


def test_root_file_operations_go_through_safefs() -> None:
    found = file_system_calls()
    unlisted = sorted(found - set(ALLOWED))
    assert not unlisted, f"use openworkbench.safefs (or run as the user), or list with a reason: {unlisted}"
    assert not sorted(set(ALLOWED) - found), "the table lists calls that are gone: drop them"


def test_every_process_started_as_a_user_gets_an_environment() -> None:
    """Every subprocess the package starts is given its environment, except the root launcher."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("subprocess."):
                where = f"{path.relative_to(SRC)}:{node.lineno}"
                given = {kw.arg for kw in node.keywords}
                assert "env" in given or where.startswith("clusters/local.py:"), f"{where}: pass env="
