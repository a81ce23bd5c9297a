"""Replicas behind a real load balancer: N ``workbench serve`` on one PostgreSQL database and one data dir, and
one HAProxy (Debian's ``haproxy``) in front, run in the foreground on free ports with a config of its own.

``haproxy_config`` renders that config; it is a pure function, tested directly, and its ``reference()`` form is
the haproxy.cfg shown in docs/deployment.md (tests/test_failover.py checks that the two agree).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import WORKBENCH, Server, clean_env, free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
COOKIE = "owb_lb"  # HAProxy's own persistence cookie: which replica a client was last sent to


@dataclass(frozen=True)
class Backend:
    name: str
    address: str  # host:port of one replica


@dataclass(frozen=True)
class Balancer:
    """What varies between the test's HAProxy and the reference one; everything else is fixed in the text."""

    bind: str
    backends: tuple[Backend, ...]
    check_inter_ms: int = 1000  # a health check per replica this often
    fall: int = 2  # consecutive failed checks that mark a replica down
    rise: int = 2  # consecutive good checks that bring it back
    stats_socket: str = ""  # a Unix socket for `show servers state` (the test waits on it); none if ""
    tunnel_timeout: str = "1h"  # an idle WebSocket (a kernel's channels, an IDE's socket) lives this long
    server_timeout: str = "1h"  # an idle response (get_job_output following a quiet job) lives this long


def haproxy_config(lb: Balancer) -> str:
    """haproxy.cfg for ``lb``: HTTP mode, round robin, ``GET /healthz`` checks, sticky by cookie, a failed
    connection retried on another replica. Pure: the same Balancer gives the same text."""
    stats = f"    stats socket {lb.stats_socket} mode 600 level admin\n" if lb.stats_socket else ""
    servers = "".join(f"    server {b.name} {b.address} check cookie {b.name}\n" for b in lb.backends)
    return f"""global
    maxconn 4096
{stats}
defaults
    mode http
    option forwardfor
    # A request whose connection to a replica failed (refused: it is dead, or not yet marked down) is sent to
    # another one. Only connection failures are retried: a launch_job that reached a replica is never sent twice.
    retries 2
    option redispatch 1
    timeout connect 2s
    timeout http-request 30s
    timeout http-keep-alive 30s
    timeout queue 30s
    # Long-lived responses: get_job_output follows a job that may print nothing for minutes.
    timeout client {lb.server_timeout}
    timeout server {lb.server_timeout}
    # WebSockets (kernels, IDEs), once upgraded.
    timeout tunnel {lb.tunnel_timeout}
    timeout client-fin 30s
    timeout server-fin 30s
    # A health check's answer may take this long: a replica busy with a burst answers /healthz late, and must
    # not be taken out for it (a dead one refuses the connection at once, so this does not slow failover).
    timeout check 5s

frontend workbench
    bind {lb.bind}
    default_backend replicas

backend replicas
    balance roundrobin
    # A client that was sent to a replica goes on to it (its streams and WebSockets, the proxy's warm
    # connections to its IDE); a dead one is left at once (redispatch), and the cookie is rewritten.
    cookie {COOKIE} insert indirect nocache httponly
    option httpchk
    http-check send meth GET uri /healthz
    http-check expect status 200
    # A replica marked down has its open connections cut: clients see them end and reconnect elsewhere.
    default-server inter {lb.check_inter_ms} fall {lb.fall} rise {lb.rise} on-marked-down shutdown-sessions
{servers}"""


def reference() -> str:
    """The haproxy.cfg of docs/deployment.md: two replicas on two hosts, port 8787, checked every second."""
    return haproxy_config(Balancer(bind="*:80", backends=(Backend("r1", "10.0.0.11:8787"),
                                                          Backend("r2", "10.0.0.12:8787"))))


@dataclass
class Replica(Server):
    """A ``Server`` that shares its data dir (and config) with others: its own name for its log."""

    name: str = "r"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def start(self) -> Replica:
        # Server.start writes the shared config file and logs to <data>.log: one file per replica instead.
        text = f'[database]\nurl = "{self.database_url}"\n' + self.config_text
        self.config_file.write_text(text)
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [WORKBENCH, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--config", str(self.config_file)], stdout=log, stderr=subprocess.STDOUT, env=clean_env())
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"replica {self.name} did not start: {self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=15)
        self.proc = None


@dataclass
class HAProxy:
    """haproxy in the foreground (``-db``) with a config of its own, on a free port; stopped by ``stop``."""

    workdir: Path
    backends: Sequence[Backend]
    check_inter_ms: int = 300
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "haproxy.sock"

    def start(self, timeout: float = 30) -> HAProxy:
        if not Path(HAPROXY).is_file():
            raise RuntimeError("haproxy is not installed: run scripts/install-system-deps.sh (make test does)")
        config = self.workdir / "haproxy.cfg"
        config.write_text(haproxy_config(Balancer(
            bind=f"127.0.0.1:{self.port}", backends=tuple(self.backends), check_inter_ms=self.check_inter_ms,
            rise=1, stats_socket=str(self.socket_path))))
        log = (self.workdir / "haproxy.log").open("ab")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        self.wait_states({b.name: "UP" for b in self.backends}, timeout)
        return self

    def check(self, config: Path) -> subprocess.CompletedProcess[str]:
        """``haproxy -c``: does HAProxy accept ``config`` (syntax, keywords, values)?"""
        return subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)

    def states(self) -> dict[str, str]:
        """Each replica's state as HAProxy's health checks see it: "UP", "DOWN" (or "MAINT", ...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        lines = raw.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row["status"].split()[0] for row in rows
                if row.get("pxname") == "replicas" and row["svname"] not in ("BACKEND", "FRONTEND")}

    def wait_states(self, wanted: dict[str, str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            with contextlib.suppress(OSError):
                seen = self.states()
                if all(seen.get(name) == state for name, state in wanted.items()):
                    return
            time.sleep(0.05)
        raise AssertionError(f"haproxy never saw {wanted}; it sees {seen}; log: {self.log()}")

    def log(self) -> str:
        path = self.workdir / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def replica_config(extra: str = "") -> str:
    """Shared by every replica: X-Forwarded-For believed from the balancer (on loopback here)."""
    return '[server]\ntrusted_proxies = ["127.0.0.1"]\n\n[auth]\nallowed_system_users = ["root"]\n' + extra


@contextlib.contextmanager
def replicas_behind_haproxy(workdir: Path, database_url: str, count: int = 2,
                            extra: str = "") -> Iterator[tuple[list[Replica], HAProxy]]:
    """``count`` replicas on ``database_url`` and ``workdir/data``, and an HAProxy in front; all stopped after."""
    data = workdir / "data"
    replicas = [Replica(data, database_url=database_url, config_text=replica_config(extra), name=f"r{n}")
                for n in range(1, count + 1)]
    balancer: HAProxy | None = None
    try:
        for replica in replicas:
            replica.start()
        balancer = HAProxy(workdir, [Backend(r.name, f"127.0.0.1:{r.port}") for r in replicas]).start()
        yield replicas, balancer
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in replicas:
            replica.stop(signal.SIGKILL)
