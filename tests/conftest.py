"""Shared fixtures: a real server on a free port, real databases, real POSIX users."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from openworkbench.services.accounts import Accounts
from openworkbench.store import Store

BIN = Path(sys.executable).parent
WORKBENCH = str(BIN / "workbench")
PG_URL = os.environ.get("WORKBENCH_TEST_PG_URL")
FINAL = ("Finished", "Failed", "Killed", "Canceled")
# pytester: tests/test_ci_required.py runs pytest on a small suite of its own.
# xdist_scheduling: how `make test` shares the tests among its xdist workers.
pytest_plugins = ["pytester", "tests.ci_required", "tests.xdist_scheduling"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("WORKBENCH_")}


@dataclass
class Server:
    """A ``workbench serve`` process; restartable on the same data directory and database."""

    data_dir: Path
    database_url: str = ""
    config_text: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # One client for all calls: a new httpx client costs ~20 ms (it loads the CA bundle).
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    start_timeout: float = 120  # seconds: generous, a shared, loaded CI machine (a start took 28 s at load 30)
    # Told apart from other servers on the same data directory (replicas): its config file and log get this suffix.
    replica: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}{self.replica}.toml"

    def start(self) -> Server:
        text = self.config_text
        if self.database_url and "[database]\n" in text:  # the test's own [database] keys (replicas) go with it
            text = text.replace("[database]\n", f'[database]\nurl = "{self.database_url}"\n', 1)
        elif self.database_url:
            text = f'[database]\nurl = "{self.database_url}"\n' + text
        if "[auth]" not in text:
            # The suite runs as root, and many tests launch jobs as root for brevity; tests of the rule against
            # root and system accounts (test_security_input.py) configure [auth] themselves.
            text += '\n[auth]\nallowed_system_users = ["root"]\n'
        self.config_file.write_text(text)
        log = open(self.data_dir.parent / f"{self.data_dir.name}{self.replica}.log", "ab")
        self.proc = subprocess.Popen(
            [WORKBENCH, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--config", str(self.config_file)],
            stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                httpx.get(f"{self.url}/api/version", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def log(self) -> str:
        return (self.data_dir.parent / f"{self.data_dir.name}{self.replica}.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.proc = None

    def accounts(self) -> Accounts:
        return Accounts(Store(self.database_url or f"sqlite:///{self.data_dir / 'workbench.db'}"))

    def token(self, username: str, kind: str = "user") -> str:
        return self.accounts().generate_token(kind, f"{username}-{kind}-{secrets.token_hex(4)}", username)

    def post(self, method: str, token: str | None, body: Any = None, **kwparams: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        payload = body if body is not None else {"method": method, "kwparams": kwparams}
        return self.client.post(f"{self.url}/api/{method}", json=payload, headers=headers)

    def rpc(self, method: str, token: str, **kwparams: Any) -> Any:
        return result_of(self.post(method, token, **kwparams))

    def job(self, token: str, job_id: str, user: str | None = None) -> dict[str, Any]:
        jobs = self.rpc("get_session", token, include_all_jobs=True, user=user)["jobs"]
        return next(job for job in jobs if job["id"] == job_id)

    def wait_job(self, token: str, job_id: str, statuses: tuple[str, ...] = FINAL,
                 timeout: float = 30, user: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(token, job_id, user)
            if job["status"] in statuses:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def sign_in_form(client: httpx.Client, token: str, next_path: str = "/") -> httpx.Response:
    """POST /auth/sign-in as the server's own form does: its CSRF token (from GET) and a same-origin Origin."""
    page = client.get("/auth/sign-in").text
    marker = 'name="csrf_token" value="'
    start = page.index(marker) + len(marker)
    fields = {"token": token, "next": next_path, "csrf_token": page[start:page.index('"', start)]}
    return client.post("/auth/sign-in", data=fields, headers={"Origin": str(client.base_url).rstrip("/")})


def sign_out_form(client: httpx.Client) -> httpx.Response:
    """POST /auth/sign-out as a page of the server would: the CSRF cookie's token and a same-origin Origin."""
    fields = {"csrf_token": client.cookies.get("owb_csrf") or ""}
    return client.post("/auth/sign-out", data=fields, headers={"Origin": str(client.base_url).rstrip("/")})


def result_of(response: httpx.Response) -> Any:
    """The ``result`` of a successful RPC answer; fails the test on any other answer."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert "error" not in body, body
    return body["result"]


def make_pg_database() -> str:
    """A fresh, empty PostgreSQL database on the throwaway server that `make test` started."""
    if not PG_URL:
        pytest.skip("WORKBENCH_TEST_PG_URL is not set: run the suite with `make test`")
    name = f"owb_{secrets.token_hex(6)}"
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return str(sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return make_pg_database()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("srv") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that kill or restart it."""
    srv = Server(tmp_path / "data")
    yield srv
    srv.stop(signal.SIGKILL)


@contextlib.contextmanager
def temporary_posix_user(prefix: str = "owbu") -> Iterator[pwd.struct_passwd]:
    """A real unprivileged POSIX user with a home under /tmp; it, its processes and its home go after."""
    name = f"{prefix}{secrets.token_hex(3)}"
    home = Path("/tmp") / f"owb-home-{name}"
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        remove_posix_user(name)
        shutil.rmtree(home, ignore_errors=True)


USERDEL_GONE = (0, 6)  # removed; no such user


def remove_posix_user(name: str, timeout: float = 15.0, with_home: bool = True) -> None:
    """Kill the user's processes and remove the user. ``userdel`` refuses (8) while a killed process is still
    exiting, so it is tried again until it works; a user that outlives ``timeout`` is reported, not left quietly
    in /etc/passwd."""
    deadline = time.monotonic() + timeout
    while True:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        done = subprocess.run(["userdel", *(["--remove"] if with_home else []), name], check=False,
                              capture_output=True, text=True)
        if done.returncode in USERDEL_GONE:
            return
        if time.monotonic() > deadline:
            print(f"conftest: cannot remove test user {name}: userdel exit {done.returncode}: {done.stderr.strip()}",
                  file=sys.stderr)
            return
        time.sleep(0.2)


@pytest.fixture(scope="session")
def posix_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("creating POSIX users needs root")
    with temporary_posix_user() as user:
        yield user
