"""The API under load, side by side: our ``get_session`` against JupyterHub's ``GET /hub/api/users``.

For each size N (10 and 1,000): our store holds N sessions and N jobs of the user, JupyterHub holds N
users. With wrk at 16 connections (and 1 for single reads, to show latency without queueing):

- list: ``get_session`` (the user's N sessions) vs ``GET /hub/api/users`` (N users);
- single: ``get_session`` of one session id vs ``GET /hub/api/users/<name>``;
- bare: uvicorn answering our exact response bytes from memory (the HTTP floor of our stack).

JupyterHub is measured through CHP (as users reach it) and direct to the hub process; ratios are
taken against the faster of the two.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, WRK_KEYS, Server, free_port, interleave, summarize_runs, wrk
from bench.hub import Hub
from bench.seed import LISTED_CONFIG, seed

SIZES = (10, 1000)
USER = "benchapi"


def rpc_body(**kwparams: Any) -> bytes:
    return json.dumps({"method": "get_session", "kwparams": kwparams}).encode()


class Bare:
    """bench.bare_http in its own process, serving fixed bodies."""

    def __init__(self, workdir: Path, bodies: dict[str, bytes]) -> None:
        self.port = free_port()
        args = []
        for path, body in bodies.items():
            file = workdir / f"bare{path.replace('/', '-')}.json"
            file.write_bytes(body)
            args.append(f"{path}={file}")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.bare_http", str(self.port), *args], cwd=ROOT,
                                     stdout=(workdir / "bare.log").open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{self.url}/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("bare server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def fill_hub(hub: Hub, size: int) -> str:
    """Top the hub up to ``size`` users; return one of them (not a spawning one) for single reads."""
    have = hub.user_count()
    hub.add_users([f"hubuser{n:05d}" for n in range(have, size)])
    assert hub.user_count() == size, hub.user_count()
    return "hubuser00005" if size > 5 else str(hub.api("GET", "users").json()[-1]["name"])


def measure_size(size: int, hub: Hub, workdir: Path, rounds: int) -> dict[str, Any]:
    data = workdir / f"api-{size}" / "data"
    ids = seed(data, {USER: (size, size)})[USER]
    server = Server(data, config_text=LISTED_CONFIG).start()
    bare: Bare | None = None
    try:
        token = server.token(USER)
        ours_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        list_body, single_body = rpc_body(), rpc_body(session_id=ids[size // 2])
        listed = server.client.post(f"{server.url}/api/get_session", content=list_body, headers=ours_headers)
        single = server.client.post(f"{server.url}/api/get_session", content=single_body, headers=ours_headers)
        assert len(listed.json()["result"]["sessions"]) == size and len(single.json()["result"]["sessions"]) == 1
        bare = Bare(workdir / f"api-{size}", {"/list": listed.content, "/single": single.content})
        hub_user = fill_hub(hub, size)
        hub_headers = {"Authorization": f"token {hub.token}"}
        rpc = f"{server.url}/api/get_session"
        targets = {
            "ours_list": lambda: wrk(rpc, 16, headers=ours_headers, method="POST", body=list_body),
            "hub_list_chp": lambda: wrk(f"{hub.public_url}/hub/api/users", 16, headers=hub_headers),
            "hub_list_direct": lambda: wrk(f"{hub.hub_url}/hub/api/users", 16, headers=hub_headers),
            "bare_list": lambda: wrk(f"{bare.url}/list", 16, method="POST", body=list_body),
            "ours_single": lambda: wrk(rpc, 16, headers=ours_headers, method="POST", body=single_body),
            "hub_single_chp": lambda: wrk(f"{hub.public_url}/hub/api/users/{hub_user}", 16, headers=hub_headers),
            "hub_single_direct": lambda: wrk(f"{hub.hub_url}/hub/api/users/{hub_user}", 16, headers=hub_headers),
            "bare_single": lambda: wrk(f"{bare.url}/single", 16, method="POST", body=single_body),
            "ours_single_c1": lambda: wrk(rpc, 1, headers=ours_headers, method="POST", body=single_body),
            "hub_single_direct_c1": lambda: wrk(f"{hub.hub_url}/hub/api/users/{hub_user}", 1, headers=hub_headers),
        }
        for run in targets.values():
            run()  # warm-up: caches, pooled connections, JIT-less but first-call imports
        runs = interleave(rounds, targets)
        result: dict[str, Any] = {name: summarize_runs(items, WRK_KEYS) for name, items in runs.items()}
        for name, items in runs.items():
            result[name]["bytes_per_response"] = items[0]["bytes_per_response"]
        for kind in ("list", "single"):
            hub_best = max(result[f"hub_{kind}_{path}"]["req_s"]["median"] for path in ("chp", "direct"))
            ours = result[f"ours_{kind}"]["req_s"]["median"]
            result[f"ratio_{kind}_ours_hub"] = round(ours / hub_best, 2)
            result[f"ratio_{kind}_ours_bare"] = round(ours / result[f"bare_{kind}"]["req_s"]["median"], 3)
        return result
    finally:
        if bare is not None:
            bare.stop()
        server.stop()


def run(hub: Hub, workdir: Path, rounds: int) -> dict[str, Any]:
    return {str(size): measure_size(size, hub, workdir, rounds) for size in SIZES}
