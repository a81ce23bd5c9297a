"""The peer: JupyterHub 5 from `.bench-venv`, behind configurable-http-proxy from `.bench-node`.

It spawns the same JupyterLab our sessions run (/opt/openworkbench/jupyter, through its
jupyterhub-singleuser) as the same POSIX user, with LocalProcessSpawner. A service token with admin
scopes drives it through its REST API, as an admin script would.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import JUPYTER_BIN, ROOT, free_port, rss_mib

HUB = ROOT / ".bench-venv" / "bin" / "jupyterhub"
CHP = ROOT / ".bench-node" / "node_modules" / ".bin" / "configurable-http-proxy"

CONFIG = """
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = ["{chp}"]
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = ["{singleuser}"]
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
# The whole list in one answer, as our get_session gives it (the default page is 50 users).
c.JupyterHub.api_page_default_limit = 100000
c.JupyterHub.api_page_max_limit = 100000
# Access lines at INFO would cost it time on every request; our server writes none either.
c.JupyterHub.log_level = "WARN"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench-admin", "services": ["bench"],
                            "scopes": ["admin:users", "admin:servers", "access:servers"]}}]
"""


class Hub:
    """One JupyterHub (and the CHP it starts) in its own directory; restartable on the same database."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(32)
        self.proxy_port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        (workdir / "jupyterhub_config.py").write_text(CONFIG.format(
            proxy_port=self.proxy_port, hub_port=self.hub_port, proxy_api_port=self.proxy_api_port, chp=CHP,
            singleuser=JUPYTER_BIN / "jupyterhub-singleuser", token=self.token))
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(timeout=60, headers={"Authorization": f"token {self.token}"})

    @property
    def public_url(self) -> str:
        """Through CHP, as users reach it."""
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def hub_url(self) -> str:
        """The hub process itself, without CHP in front."""
        return f"http://127.0.0.1:{self.hub_port}"

    def start(self) -> float:
        """Start hub and CHP; seconds until the REST API answers through CHP."""
        log = (self.workdir / "hub.log").open("ab")
        began = time.monotonic()
        self.proc = subprocess.Popen([str(HUB), "-f", "jupyterhub_config.py"], cwd=self.workdir, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - began < 120:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited: {self.log()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.get(f"{self.public_url}/hub/api/", timeout=2).status_code == 200:
                    return time.monotonic() - began
            time.sleep(0.005)
        raise RuntimeError(f"jupyterhub did not start: {self.log()[-3000:]}")

    def log(self) -> str:
        return (self.workdir / "hub.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM: the hub stops its users' servers and its CHP itself."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def rss_mib(self) -> dict[str, float]:
        assert self.proc is not None
        out = {"hub": rss_mib(self.proc.pid)}
        pid_file = self.workdir / "jupyterhub-proxy.pid"
        with contextlib.suppress(OSError, ValueError):
            out["chp"] = rss_mib(int(pid_file.read_text().strip()))
        return out

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, f"{self.hub_url}/hub/api/{path}", **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"hub {method} {path}: {response.status_code} {response.text}")
        return response

    def add_users(self, names: list[str]) -> None:
        for start in range(0, len(names), 500):
            self.api("POST", "users", json={"usernames": names[start:start + 500]})

    def user_count(self) -> int:
        return len(self.api("GET", "users").json())

    def spawn(self, name: str) -> None:
        """Ask for the user's server; the caller polls its URL through CHP."""
        self.api("POST", f"users/{name}/server")

    def stop_server(self, name: str, timeout: float = 60) -> None:
        self.api("DELETE", f"users/{name}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            user = self.api("GET", f"users/{name}").json()
            server = user.get("servers", {}).get("")
            if not server:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the hub did not stop {name}'s server")

    def server_url(self, name: str) -> str:
        return f"{self.public_url}/user/{name}/"
