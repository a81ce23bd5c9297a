"""Sessions side by side: start-up, small GETs through the proxy, kernel WebSocket round trips.

- Start: ``launch_session`` JupyterLab -> first 200 of ``api/status`` through ``/s/``, against the same
  JupyterLab started bare (exec -> first 200 on its TCP port), and against JupyterHub's spawn of it
  (REST ``POST users/<u>/server`` -> first 200 through CHP). All polled every 20 ms, all as one user.
- Proxy: ``GET api/status`` with wrk at concurrency 1 and 16 through ``/s/``, direct to a bare JupyterLab
  on TCP, and through a configurable-http-proxy in front of that same bare JupyterLab.
- Kernel round trips: ``execute_request`` -> ``execute_reply`` through ``/s/``, direct to the session's own
  Unix socket, direct to the bare JupyterLab's TCP port, and through CHP.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    ROOT,
    WRK_KEYS,
    Server,
    free_port,
    interleave,
    jupyter_lab_tcp,
    stop_group,
    summarize_runs,
    summary,
    wait_jupyter_status,
    wrk,
)
from bench.hub import CHP, Hub
from openworkbench.store.schema import Session
from tests.sessions_helpers import launch, session_server, wait_state

START_ROUNDS = int(os.environ.get("OWB_BENCH_START_ROUNDS", "5"))
WS_COUNT = 100


class Peers:
    """What the proxy measures compare against: a bare JupyterLab on TCP, and CHP in front of it."""

    def __init__(self, user: pwd.struct_passwd, workdir: Path) -> None:
        self.token = secrets.token_hex(24)
        self.jupyter_port, self.chp_port, self.chp_api = free_port(), free_port(), free_port()
        self.jupyter = jupyter_lab_tcp(user, self.jupyter_port, self.token, workdir / "direct-jupyter.log")
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)}
        self.chp = subprocess.Popen(
            [str(CHP), "--ip", "127.0.0.1", "--port", str(self.chp_port), "--api-ip", "127.0.0.1",
             "--api-port", str(self.chp_api), "--default-target", f"http://127.0.0.1:{self.jupyter_port}",
             "--log-level", "warn"],
            env=env, stdout=(workdir / "chp.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        with httpx.Client() as client:
            wait_jupyter_status(client, f"{self.direct}api/status", self.headers)
            wait_jupyter_status(client, f"{self.via_chp}api/status", self.headers)

    @property
    def direct(self) -> str:
        return f"http://127.0.0.1:{self.jupyter_port}/"

    @property
    def via_chp(self) -> str:
        return f"http://127.0.0.1:{self.chp_port}/"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def stop(self) -> None:
        stop_group(self.chp)
        stop_group(self.jupyter)


# -- start ---------------------------------------------------------------------------------------------
def start_ours(server: Server, token: str, client: httpx.Client) -> dict[str, Any]:
    began = time.monotonic()
    address = launch(server, token, "JupyterLab")
    ready = wait_jupyter_status(client, f"{server.url}{address['url']}api/status", {"Authorization": f"Bearer {token}"})
    server.rpc("stop_session", token, session_ids=address["id"])
    wait_state(server, token, address["id"], ("finished", "killed"))
    return {"s": ready - began}


def start_bare(user: pwd.struct_passwd, workdir: Path, client: httpx.Client) -> dict[str, Any]:
    port, token = free_port(), secrets.token_hex(24)
    began = time.monotonic()
    proc = jupyter_lab_tcp(user, port, token, workdir / "bare-start.log")
    try:
        ready = wait_jupyter_status(client, f"http://127.0.0.1:{port}/api/status", {"Authorization": f"token {token}"})
    finally:
        stop_group(proc)
    return {"s": ready - began}


def start_hub(hub: Hub, user: pwd.struct_passwd, client: httpx.Client) -> dict[str, Any]:
    began = time.monotonic()
    hub.spawn(user.pw_name)
    try:
        ready = wait_jupyter_status(client, f"{hub.server_url(user.pw_name)}api/status",
                                    {"Authorization": f"token {hub.token}"})
    finally:
        hub.stop_server(user.pw_name)
    return {"s": ready - began}


def session_start(server: Server, token: str, user: pwd.struct_passwd, hub: Hub, workdir: Path) -> dict[str, Any]:
    with httpx.Client() as client:
        targets = {
            "ours": lambda: start_ours(server, token, client),
            "bare": lambda: start_bare(user, workdir, client),
            "jupyterhub": lambda: start_hub(hub, user, client),
        }
        interleave(1, targets)  # warm-up: first starts read everything from disk
        runs = interleave(START_ROUNDS, targets)
    result = {name: summary([run["s"] for run in items], 3) for name, items in runs.items()}
    return {**result, "ratio_ours_bare": round(result["ours"]["median"] / result["bare"]["median"], 3),
            "ratio_hub_bare": round(result["jupyterhub"]["median"] / result["bare"]["median"], 3)}


# -- proxy ---------------------------------------------------------------------------------------------
def small_gets(server: Server, token: str, prefix: str, peers: Peers, rounds: int) -> dict[str, Any]:
    ours_url, ours_headers = f"{server.url}{prefix}api/status", {"Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {}
    for connections in (1, 16):
        targets = {
            "ours": lambda c=connections: wrk(ours_url, c, headers=ours_headers),
            "direct": lambda c=connections: wrk(f"{peers.direct}api/status", c, headers=peers.headers),
            "chp": lambda c=connections: wrk(f"{peers.via_chp}api/status", c, headers=peers.headers),
        }
        for run in targets.values():
            run()  # warm-up: pooled connections, the first kernel-manager and auth look-ups
        runs = interleave(rounds, targets)
        result = {name: summarize_runs(items, WRK_KEYS) for name, items in runs.items()}
        direct = result["direct"]["req_s"]["median"]
        out[f"c{connections}"] = {**result,
                                  "ratio_ours_direct": round(result["ours"]["req_s"]["median"] / direct, 3),
                                  "ratio_chp_direct": round(result["chp"]["req_s"]["median"] / direct, 3)}
    return out


def ws_rtt(base: str, headers: dict[str, str], unix: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.ws_rtt", base, "--count", str(WS_COUNT)]
    cmd += [arg for name, value in headers.items() for arg in ("--header", f"{name}: {value}")]
    cmd += ["--unix", unix] if unix else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=True)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def kernel_round_trips(server: Server, token: str, session_id: str, peers: Peers, rounds: int) -> dict[str, Any]:
    with server.accounts().store.session() as db:
        row = db.get(Session, session_id)
        assert row is not None
        prefix, socket_path, secret = row.url, row.socket_path, row.secret
    targets = {
        "ours": lambda: ws_rtt(f"{server.url}{prefix}", {"Authorization": f"Bearer {token}"}),
        "direct_unix": lambda: ws_rtt(f"http://localhost{prefix}", {"Authorization": f"token {secret}"},
                                      socket_path),
        "direct_tcp": lambda: ws_rtt(peers.direct, peers.headers),
        "chp": lambda: ws_rtt(peers.via_chp, peers.headers),
    }
    runs = interleave(rounds, targets)
    return {name: summarize_runs(items, ("p50_ms", "p99_ms", "max_ms")) for name, items in runs.items()}


def run(user: pwd.struct_passwd, hub: Hub, workdir: Path, rounds: int) -> dict[str, Any]:
    peers: Peers | None = None
    with session_server(workdir / "sessions-data") as server:
        try:
            token = server.token(user.pw_name)
            result: dict[str, Any] = {"start": session_start(server, token, user, hub, workdir)}
            address = launch(server, token, "JupyterLab")
            wait_state(server, token, address["id"], ("running",))
            peers = Peers(user, workdir)
            result["small_gets"] = small_gets(server, token, address["url"], peers, rounds)
            result["kernel_rtt"] = kernel_round_trips(server, token, address["id"], peers, rounds)
            server.rpc("stop_session", token, session_ids=address["id"])
            wait_state(server, token, address["id"], ("finished", "killed"))
            return result
        finally:
            if peers is not None:
                peers.stop()
