"""IDE definitions, on the real IDEs installed by scripts/install-ides.sh: each is started from its own
argv and environment on a Unix socket in a 0700 directory, probed, made busy, saved, and stopped."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from openworkbench.config import IdeSettings, load_settings
from openworkbench.errors import InvalidParameter, NotAvailable
from openworkbench.ides import (
    IDES,
    Activity,
    Ide,
    IdeClient,
    JupyterLab,
    JupyterNotebook,
    LaunchContext,
    RStudio,
    VSCode,
    available,
    ide_for,
)

PREFIX = "/opt/openworkbench"
SETTINGS = load_settings()
AS_ROOT = ["--allow-root"] if os.geteuid() == 0 else []  # Jupyter refuses root without it
READY_TIMEOUT = 30.0
T = TypeVar("T", bound=Ide)


def installed(name: str) -> bool:
    return available(SETTINGS.ides[name], PREFIX)


def ide(cls: type[T], **settings: Any) -> T:
    base = SETTINGS.ides[cls.name].model_dump()
    return cls(IdeSettings(**{**base, **settings}), PREFIX)


@dataclass
class Place:
    """A short private tree (sockets must stay under 107 bytes): run/ 0700, state/, home/, work/."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ctx(self, open_file: str | None = None, **extra: Any) -> LaunchContext:
        fields: dict[str, Any] = {
            "session_id": "0123abcd", "prefix": "/s/0da29cfc78a31acd0123abcd/", "secret": "s3cret-0123abcd",
            "socket_path": str(self.root / "run" / "s.sock"), "state_dir": str(self.root / "state"),
            "working_dir": str(self.root / "work"), "home": str(self.root / "home"), "open_file": open_file,
        }
        return LaunchContext(**{**fields, **extra})


@pytest.fixture
def place() -> Iterator[Place]:
    root = Path(tempfile.mkdtemp(prefix="owb-ide-", dir="/tmp"))
    for name, mode in (("run", 0o700), ("state", 0o700), ("home", 0o755), ("work", 0o755)):
        (root / name).mkdir(mode=mode)
    (root / "work" / "a.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    spot = Place(root)
    try:
        yield spot
    finally:
        for pid in pids_mentioning(str(root)):  # only what this test started: their argv names our tree
            os.kill(pid, signal.SIGKILL)
        for proc in spot.procs:
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                environ = Path(f"/proc/{entry}/environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in cmdline or text in environ:
                found.append(int(entry))
    return found


@dataclass
class Running:
    ide: Ide
    ctx: LaunchContext
    proc: subprocess.Popen[bytes]
    log: Path
    started: float

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start(place: Place, ide: Ide, ctx: LaunchContext) -> Running:
    env = {"HOME": ctx.home, "USER": "root", "LOGNAME": "root", "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", **ide.environment(ctx)}
    log = Path(ctx.state_dir).parent / "ide.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(ide.argv(ctx), env=env, cwd=ctx.working_dir, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    place.procs.append(proc)
    return Running(ide, ctx, proc, log, time.monotonic())


async def wait_ready(run: Running) -> str:
    """How long from the process start and from the socket's appearance to the first 200 on ready_path."""
    deadline = time.monotonic() + READY_TIMEOUT
    appeared: float | None = None
    while time.monotonic() < deadline:
        assert run.proc.poll() is None, f"{run.ide.name} exited: {run.output()}"
        if appeared is None and os.path.exists(run.ctx.socket_path):
            appeared = time.monotonic()
        if appeared is not None:
            try:
                async with IdeClient(run.ide, run.ctx) as client:
                    if await client.status(run.ide.ready_path) == 200:
                        now = time.monotonic()
                        return f"ready {now - run.started:.2f} s after start, {now - appeared:.2f} s after its socket"
            except Exception:
                pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{run.ide.name} never answered {run.ide.ready_path}: {run.output()}")


def wait_exit(run: Running, timeout: float = 15) -> int:
    try:
        return run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{run.ide.name} did not exit: {run.output()}") from None


def assert_private_socket(ctx: LaunchContext) -> None:
    assert stat.S_ISSOCK(os.stat(ctx.socket_path).st_mode)
    assert stat.S_IMODE(os.stat(ctx.socket_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(ctx.socket_path)).st_mode) == 0o700


async def activity(run: Running) -> Activity:
    async with IdeClient(run.ide, run.ctx) as client:
        return await run.ide.activity(client)


async def until(check: Any, what: str, timeout: float = 5) -> Activity:
    deadline = time.monotonic() + timeout
    while True:
        seen = await check()
        if seen is not None:
            return seen  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


# -- pure: argv, availability ------------------------------------------------------------------


def test_table_keeps_the_products_names_languages_and_project_ids() -> None:
    assert {name: (cls.lang, cls.project_id) for name, cls in IDES.items()} == {
        "RStudio": ("R", "cfc78a31"), "JupyterLab": ("Jupyter", "21f2ed72"),
        "Jupyter Notebook": ("Jupyter", "2cb256d2"), "VS Code": ("code-server", "3c9ab5a7"),
    }
    assert isinstance(ide_for("VS Code", SETTINGS), VSCode)
    with pytest.raises(InvalidParameter):
        ide_for("Positron", SETTINGS)


def test_unavailable_when_missing_or_disabled(place: Place) -> None:
    assert not ide_for("RStudio", SETTINGS).available()  # rserver cannot be installed here
    assert not ide(JupyterLab, exe="/nonexistent/jupyter-lab").available()
    assert not ide(JupyterLab, exe="no-such-jupyter-on-path").available()
    disabled = ide(VSCode, exe="/bin/true", enabled=False)
    assert not disabled.available()
    with pytest.raises(NotAvailable, match="disabled"):
        disabled.argv(place.ctx())
    with pytest.raises(NotAvailable, match="not found"):
        ide(RStudio).argv(place.ctx(port=8790, user="alice"))


def test_argv_carries_prefix_socket_and_extra_args(place: Place) -> None:
    ctx = place.ctx()
    lab = ide(JupyterLab, exe="/bin/true", args=["--ServerApp.log_level=DEBUG"]).argv(ctx)
    assert lab[0] == "/bin/true" and lab[-1] == "--ServerApp.log_level=DEBUG"
    assert f"--ServerApp.sock={ctx.socket_path}" in lab and "--ServerApp.sock_mode=0600" in lab
    assert f"--ServerApp.base_url={ctx.prefix}" in lab and f"--ServerApp.root_dir={ctx.working_dir}" in lab
    assert "--KernelManager.transport=ipc" in lab and ctx.secret not in " ".join(lab)  # the token is in env
    assert JupyterLab.strip_prefix is False and VSCode.strip_prefix is True and RStudio.strip_prefix is True
    assert ide(JupyterLab).environment(ctx)["JUPYTER_TOKEN"] == ctx.secret
    assert ide(JupyterLab).upstream_headers(ctx) == {"Authorization": f"token {ctx.secret}"}
    code = ide(VSCode, exe="/bin/true").argv(ctx)
    assert code[1:7] == ["--auth", "none", "--socket", ctx.socket_path, "--socket-mode", "600"]
    assert code[-1] == ctx.working_dir and f"{ctx.state_dir}/user-data" in code
    rstudio = ide(RStudio, exe="/bin/true").argv(place.ctx(port=8790, user="alice"))
    assert {"--www-address=127.0.0.1", "--www-port=8790", f"--www-root-path={ctx.prefix}", "--auth-none=1",
            "--server-user=alice", "--server-daemonize=0"} <= set(rstudio)
    assert RStudio.uses_socket is False and RStudio.self_suspend == ("rsession", signal.SIGUSR2)
    conf = ide(RStudio).config_files(ctx)
    assert conf[f"{ctx.state_dir}/rstudio/database.conf"].startswith("provider=sqlite\n")
    assert IdeClient(ide(RStudio), place.ctx(port=8790)).base == "http://127.0.0.1:8790/"
    assert IdeClient(ide(JupyterLab), ctx).base == "http://localhost" + ctx.prefix


def test_open_file_becomes_the_landing_page(place: Place) -> None:
    (place.root / "work" / "sub dir").mkdir()
    lab, notebook, code = ide(JupyterLab), ide(JupyterNotebook), ide(VSCode)
    assert lab.default_url(place.ctx(open_file="sub dir/x.ipynb")) == "/lab/tree/sub%20dir/x.ipynb"
    assert notebook.default_url(place.ctx(open_file=str(place.root / "work" / "a.ipynb"))) == "/notebooks/a.ipynb"
    assert notebook.default_url(place.ctx(open_file="run.py")) == "/edit/run.py"
    assert notebook.default_url(place.ctx(open_file="sub dir", open_is_dir=True)) == "/tree/sub%20dir"
    assert lab.default_url(place.ctx(open_file="/etc/passwd")) is None  # outside root_dir: Jupyter cannot serve it
    assert lab.default_url(place.ctx()) is None
    assert code.target(place.ctx(open_file="sub dir", open_is_dir=True)) == str(place.root / "work" / "sub dir")
    assert code.target(place.ctx(open_file="a.ipynb")) == str(place.root / "work")


def test_kernels_fall_back_to_tcp_when_ipc_socket_paths_would_be_too_long(place: Place) -> None:
    deep = place.ctx(socket_path="/tmp/" + "d" * 60 + "/s.sock")
    assert "--KernelManager.transport=tcp" in ide(JupyterLab, exe="/bin/true").argv(deep)


# -- real processes ------------------------------------------------------------------------------


async def run_busy_cell(client: IdeClient, kernel_id: str, run: Running) -> None:
    """Execute a 3 s sleep over the kernel WebSocket; while it runs the session is executing."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
              "date": datetime.now(UTC).isoformat(), "version": "5.3"}
    content = {"code": "import time; time.sleep(3)", "silent": False, "store_history": False,
               "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
    async with client.websocket(f"api/kernels/{kernel_id}/channels") as ws:
        await ws.send_json({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                            "channel": "shell", "buffers": []})
        await wait_status(ws, msg_id, "busy")

        async def busy() -> Activity | None:
            seen = await activity(run)
            return seen if seen.executing else None

        during = await until(busy, "executing while the cell runs")
        assert during.connections >= 1  # our WebSocket
        await wait_status(ws, msg_id, "idle")

    async def idle() -> Activity | None:
        seen = await activity(run)
        return None if seen.executing else seen

    await until(idle, "idle after the cell")


async def wait_status(ws: Any, msg_id: str, state: str) -> None:
    async with asyncio.timeout(20):
        while True:
            msg = await ws.receive_json()
            if (msg.get("msg_type") == "status" and msg["parent_header"].get("msg_id") == msg_id
                    and msg["content"]["execution_state"] == state):
                return


async def jupyter_session(run: Running, cls: type[Ide]) -> dict[str, Any]:
    ready = await wait_ready(run)
    print(f"\n{cls.name}: {ready}")
    assert_private_socket(run.ctx)
    idle = await activity(run)
    assert idle.executing is False and idle.connections == 0 and idle.last_activity is not None
    async with IdeClient(run.ide, replace(run.ctx, secret="wrong")) as stranger:
        assert await stranger.status("api/status") == 403  # the socket is not enough: the token is needed too
    async with IdeClient(run.ide, run.ctx) as client:
        assert (await client.status("")) == 302  # base_url works: the landing page redirects under the prefix
        created = await client.post("api/sessions", json={"path": "a.ipynb", "type": "notebook",
                                                          "kernel": {"name": "python3"}})
        assert created == 201
        runtime = Path(run.ctx.runtime_dir("jupyter"))
        connection_files = list(runtime.glob("kernel-*.json"))
        assert connection_files and all('"transport": "ipc"' in f.read_text() for f in connection_files)  # no TCP
        sessions = await client.get_json("api/sessions")
        await run_busy_cell(client, sessions[0]["kernel"]["id"], run)
        manifest = await run.ide.save_state(client, run.ctx)
        assert await run.ide.request_shutdown(client) is True
    assert wait_exit(run) == 0
    assert pids_mentioning(run.ctx.runtime_dir("jupyter")) == []  # its kernels went with it
    assert run.ide.transient_dirs(run.ctx) == [run.ctx.runtime_dir("jupyter")]
    assert run.ide.restore_args(run.ctx, manifest) == []
    return manifest


@pytest.mark.skipif(not installed("JupyterLab"), reason="run scripts/install-ides.sh")
def test_jupyterlab_runs_busy_saves_and_shuts_itself_down(place: Place) -> None:
    lab = ide(JupyterLab, args=AS_ROOT)
    run = start(place, lab, place.ctx(open_file="a.ipynb"))
    manifest = asyncio.run(jupyter_session(run, JupyterLab))
    assert manifest["open"] == ["a.ipynb"] and manifest["last_modified"]["a.ipynb"]
    assert manifest["kernels_lost"] == ["python3"] and manifest["working_dir"] == run.ctx.working_dir
    assert manifest["workspaces_dir"] == f"{run.ctx.state_dir}/lab-workspaces"


@pytest.mark.skipif(not installed("Jupyter Notebook"), reason="run scripts/install-ides.sh")
def test_jupyter_notebook_runs_busy_saves_and_shuts_itself_down(place: Place) -> None:
    notebook = ide(JupyterNotebook, args=AS_ROOT)
    run = start(place, notebook, place.ctx(open_file="a.ipynb"))
    manifest = asyncio.run(jupyter_session(run, JupyterNotebook))
    assert manifest["open"] == ["a.ipynb"] and "workspaces_dir" not in manifest


async def code_server_session(run: Running) -> dict[str, Any]:
    ready = await wait_ready(run)
    print(f"\nVS Code: {ready}")
    assert_private_socket(run.ctx)
    quiet = await activity(run)  # nobody connected yet, and /healthz does not count
    assert quiet == Activity(executing=False, last_activity=None, connections=0)
    async with IdeClient(run.ide, run.ctx) as client:
        assert client.base == "http://localhost/"  # the proxy strips the prefix
        assert await client.status("") == 302  # to ./?folder=<working dir>
        used = await activity(run)
        assert used.connections == 1 and used.last_activity is not None and not used.executing
        manifest = await run.ide.save_state(client, run.ctx)
        assert await run.ide.request_shutdown(client) is False  # no API: the server sends SIGTERM
    return manifest


@pytest.mark.skipif(not installed("VS Code"), reason="run scripts/install-ides.sh")
def test_code_server_runs_keeps_state_in_the_state_dir_and_ends_on_sigterm(place: Place) -> None:
    run = start(place, ide(VSCode), place.ctx())
    manifest = asyncio.run(code_server_session(run))
    assert manifest["user_data_dir"] == f"{run.ctx.state_dir}/user-data"
    run.proc.send_signal(signal.SIGTERM)
    wait_exit(run)
    assert pids_mentioning(str(Path(run.ctx.state_dir).parent)) == []  # its helper processes too
    assert (Path(run.ctx.state_dir) / "user-data" / "User").is_dir()
    assert not (Path(run.ctx.home) / ".config" / "code-server").exists()
