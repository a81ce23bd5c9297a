"""Idle open homepages (issue 15, point 2): what N tabs that show a user's sessions and wait cost the server, under
the old poll (``GET /api/get_session`` every 500 ms with the sign-in cookie, as static/app.js did) and under the
long-poll (``GET /live/sessions?version=<v>``, as it does now), in one run on one server: requests made and the
server's CPU seconds (its process, as /metrics' ``process_cpu_seconds_total`` counts it), and their ratios.

Usage on its own: PYTHONPATH=. .venv/bin/python -m bench.live
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.common import posix_user, write_result
from bench.pages import POLL_S, cpu_seconds
from bench.seed import LISTED_CONFIG, seed
from tests.conftest import Server, sign_in_form

TABS = 50
SECONDS = 20.0
SESSIONS = 20  # on each tab's list


async def _poll(client: aiohttp.ClientSession, url: str, deadline: float, counts: list[int]) -> None:
    while time.monotonic() < deadline:
        async with client.get(url + "/api/get_session") as response:
            await response.read()
            counts[0 if response.status == 200 else 1] += 1
        await asyncio.sleep(POLL_S)


async def _long_poll(client: aiohttp.ClientSession, url: str, deadline: float, counts: list[int]) -> None:
    async with client.get(url + "/live/sessions") as response:  # what the page's load hands the script
        version = (await response.json())["version"]
    while time.monotonic() < deadline:
        remaining = deadline - time.monotonic()
        counts[0] += 1  # made: a long-poll still waiting when the window ends counts too
        try:
            async with client.get(url + "/live/sessions", params={"version": version},
                                  timeout=aiohttp.ClientTimeout(total=remaining)) as response:
                body = await response.json()
        except TimeoutError:  # the window ended while it waited: the tab is closed
            return
        counts[1] += response.status != 200
        version = body["version"]
        if body["busy"]:  # past the server's bound on waiters: the page then polls (static/app.js)
            await asyncio.sleep(POLL_S)


def idle_tabs(server: Server, headers: dict[str, str], mode: str) -> dict[str, Any]:
    """``TABS`` idle tabs (none for mode "none") for ``SECONDS``: requests made (and failed) and the server's
    CPU meanwhile."""
    assert server.proc is not None
    follow = _poll if mode == "poll" else _long_poll
    counts = [0, 0]

    async def main() -> tuple[float, float]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as client:
            await asyncio.sleep(1)
            cpu0, began = cpu_seconds(server.proc.pid), time.monotonic()  # type: ignore[union-attr]
            deadline = began + SECONDS
            tabs = [follow(client, server.url, deadline, counts) for _ in range(TABS if mode != "none" else 0)]
            await asyncio.gather(asyncio.sleep(SECONDS), *tabs)
            return cpu_seconds(server.proc.pid) - cpu0, time.monotonic() - began  # type: ignore[union-attr]

    cpu, wall = asyncio.run(main())
    return {"requests": counts[0], "errors": counts[1], "req_s": round(counts[0] / wall, 2),
            "cpu_s": round(cpu, 3), "cpu_pct": round(100 * cpu / wall, 2), "wall_s": round(wall, 1)}


def run(user: str, workdir: Path) -> dict[str, Any]:
    data = workdir / "live" / "data"
    seed(data, {user: (SESSIONS, 0)})
    # 50 tabs of one user stand for 50 users' tabs: the per-user bound (4 by default) is raised to let them wait.
    config = LISTED_CONFIG + f"[server]\nlive_max_waiters_per_user = {TABS}\n"
    server = Server(data, config_text=config).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert sign_in_form(client, server.token(user)).status_code == 303
            client.get("/")
            cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
            headers = {"Cookie": cookie, "X-OWB-CSRF": client.cookies["owb_csrf"], "Sec-Fetch-Site": "same-origin"}
        quiet = idle_tabs(server, headers, "none")  # the server's own background work, no tab open
        poll, long_poll = idle_tabs(server, headers, "poll"), idle_tabs(server, headers, "long-poll")
        return {
            "tabs": TABS, "seconds": SECONDS, "sessions": SESSIONS, "load_avg": os.getloadavg()[0],
            "poll": poll, "long_poll": long_poll, "quiet": quiet,
            "requests_ratio": round(poll["requests"] / max(1, long_poll["requests"]), 1),
            "cpu_ratio": round(poll["cpu_s"] / max(0.001, long_poll["cpu_s"]), 1),
        }
    finally:
        server.stop()


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="owb-bench-live-"))
    workdir.chmod(0o711)
    with posix_user() as account:
        result = run(account.pw_name, workdir)
    print(write_result("live", result))
    print(result)


if __name__ == "__main__":
    main()
