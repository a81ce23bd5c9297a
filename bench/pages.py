"""The homepage (issue 11, point 4): first byte and requests/s with 100 sessions in the store, and the server's CPU
while a session starts with and without 50 open homepages following live updates (each polling the cached
``get_session`` every 500 ms with the sign-in cookie, as static/app.js does).

Usage on its own: PYTHONPATH=. .venv/bin/python -m bench.pages
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.common import WRK_KEYS, posix_user, summarize_runs, write_result, wrk
from bench.seed import KEEP_LISTED, seed
from tests.conftest import Server, sign_in_form
from tests.sessions_helpers import launch, session_config, wait_state

SESSIONS = 100
FOLLOWERS = 50
POLL_S = 0.5  # static/app.js's POLL_MS
FIRST_BYTE_SAMPLES = 200


def py_load(url: str, connections: int, headers: dict[str, str], seconds: float = 5) -> dict[str, Any]:
    """wrk's measure in Python (aiohttp), for a machine without wrk (``make bench`` installs it): slower
    client, so a floor of what the server does, not its ceiling."""
    async def client(latencies: list[float], deadline: float) -> None:
        async with aiohttp.ClientSession(headers=headers) as session:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: {response.status}")
                latencies.append(time.perf_counter() - began)

    async def main() -> list[float]:
        latencies: list[float] = []
        began = time.monotonic()
        await asyncio.gather(*(client(latencies, began + seconds) for _ in range(connections)))
        return latencies

    began = time.monotonic()
    latencies = sorted(asyncio.run(main()))
    return {"req_s": len(latencies) / (time.monotonic() - began), "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "requests": len(latencies)}


def load(url: str, connections: int, headers: dict[str, str]) -> dict[str, Any]:
    return wrk(url, connections, headers=headers) if shutil.which("wrk") else py_load(url, connections, headers)


def cpu_seconds(pid: int) -> float:
    """The server process's own CPU (user + system; not its children: the IDEs it starts)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_byte(client: httpx.Client) -> dict[str, Any]:
    times = []
    for _ in range(FIRST_BYTE_SAMPLES):
        began = time.perf_counter()
        with client.stream("GET", "/") as response:
            times.append(time.perf_counter() - began)  # headers in: the first byte and then some
            assert response.status_code == 200, response.status_code
            response.read()
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2)}


async def _follow(url: str, headers: dict[str, str], stop: threading.Event, counts: list[int]) -> None:
    async with aiohttp.ClientSession(headers=headers) as client:
        while not stop.is_set():
            async with client.get(url + "/api/get_session") as response:
                await response.read()
                counts[0 if response.status == 200 else 1] += 1
            await asyncio.sleep(POLL_S)


def followers(url: str, headers: dict[str, str], stop: threading.Event, counts: list[int]) -> threading.Thread:
    async def main() -> None:
        await asyncio.gather(*(_follow(url, headers, stop, counts) for _ in range(FOLLOWERS)))

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    return thread


def session_start_cpu(server: Server, token: str, headers: dict[str, str], with_followers: bool) -> dict[str, Any]:
    """Server CPU from launching a JupyterLab to its ``running``, with or without the 50 followers."""
    assert server.proc is not None
    stop, counts = threading.Event(), [0, 0]
    thread = followers(server.url, headers, stop, counts) if with_followers else None
    time.sleep(2 if thread else 0)  # every follower connected and polling
    cpu0, began = cpu_seconds(server.proc.pid), time.monotonic()
    started = launch(server, token, "JupyterLab", name="bench")
    wait_state(server, token, started["id"], ("running",), timeout=180)
    cpu, wall = cpu_seconds(server.proc.pid) - cpu0, time.monotonic() - began
    stop.set()
    if thread:
        thread.join(timeout=10)
    server.rpc("stop_session", token, session_ids=started["id"], force_quit=True)
    wait_state(server, token, started["id"], ("killed", "finished"), timeout=60)
    return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "cpu_pct": round(100 * cpu / wall, 1),
            "follower_requests": counts[0], "follower_errors": counts[1]}


def run(user: str, workdir: Path, rounds: int) -> dict[str, Any]:
    data = workdir / "pages" / "data"
    seed(data, {user: (SESSIONS, 0)})
    runtime = Path("/tmp") / f"owb-rt-bench-{secrets.token_hex(3)}"
    server = Server(data, config_text=session_config(runtime, KEEP_LISTED, start_timeout_s=180)).start()
    try:
        token = server.token(user)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert sign_in_form(client, token).status_code == 303
            client.get("/")
            cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
            page_headers = {"Cookie": cookie, "X-OWB-CSRF": client.cookies["owb_csrf"],
                            "Sec-Fetch-Site": "same-origin"}
            listed = client.get("/api/get_session", headers=page_headers).json()["result"]["sessions"]
            assert len(listed) == SESSIONS, len(listed)
            first = [first_byte(client) for _ in range(rounds)]
        homepage = [load(server.url + "/", 16, {"Cookie": cookie}) for _ in range(rounds)]
        poll = [load(server.url + "/api/get_session", 16, page_headers) for _ in range(rounds)]
        # The same call with a token, for the cost of the cookie and the CSRF check.
        token_poll = [load(server.url + "/api/get_session", 16, {"Authorization": f"Bearer {token}"})
                      for _ in range(rounds)]
        quiet = [session_start_cpu(server, token, page_headers, False) for _ in range(rounds)]
        followed = [session_start_cpu(server, token, page_headers, True) for _ in range(rounds)]
        return {
            "sessions": SESSIONS, "followers": FOLLOWERS, "load_avg": os.getloadavg()[0],
            "load_tool": "wrk" if shutil.which("wrk") else "python (aiohttp): wrk missing",
            "first_byte": summarize_runs(first, ("p50_ms", "p99_ms")),
            "homepage": summarize_runs(homepage, WRK_KEYS),
            "poll": summarize_runs(poll, WRK_KEYS),
            "poll_with_token": summarize_runs(token_poll, WRK_KEYS),
            "start_without_followers": summarize_runs(quiet, ("cpu_s", "wall_s", "cpu_pct")),
            "start_with_followers": summarize_runs(followed, ("cpu_s", "wall_s", "cpu_pct", "follower_requests",
                                                              "follower_errors")),
        }
    finally:
        server.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def main() -> None:
    import tempfile

    from bench.common import ROUNDS

    workdir = Path(tempfile.mkdtemp(prefix="owb-bench-pages-"))
    workdir.chmod(0o711)
    with posix_user() as account:
        result = run(account.pw_name, workdir, ROUNDS)
    print(write_result("pages", result))
    print(result)


if __name__ == "__main__":
    main()
