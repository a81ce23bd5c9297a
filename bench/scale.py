"""Scale: a store with 10,000 jobs and 1,000 sessions (100 users, each 10 sessions and 100 jobs).

Ours at scale against ours on a store of one such user only (the bare baseline: the same server, the
same answer, a small store), and against JupyterHub holding 1,000 users:
- start-up: exec -> first answer of the API (ours: ``/api/version``; JupyterHub: ``/hub/api/`` through CHP);
- ``get_session`` list and single p99 at 16 clients (JupyterHub: ``GET /hub/api/users/<name>``);
- resident memory of the server process after that load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import WRK_KEYS, Server, interleave, rss_mib, start_timed, summarize_runs, summary, wrk
from bench.hub import Hub
from bench.seed import LISTED_CONFIG, seed

USERS, SESSIONS, JOBS = 100, 10, 100


def rpc_body(**kwparams: Any) -> bytes:
    return json.dumps({"method": "get_session", "kwparams": kwparams}).encode()


def restart(server: Server) -> float:
    server.stop()
    return start_timed(server)


def run(hub: Hub, workdir: Path, rounds: int) -> dict[str, Any]:
    names = [f"scaleuser{n:03d}" for n in range(USERS)]
    ids = seed(workdir / "scale-big" / "data", dict.fromkeys(names, (SESSIONS, JOBS)))[names[0]]
    small_ids = seed(workdir / "scale-small" / "data", {names[0]: (SESSIONS, JOBS)})[names[0]]
    big = Server(workdir / "scale-big" / "data", config_text=LISTED_CONFIG)
    small = Server(workdir / "scale-small" / "data", config_text=LISTED_CONFIG)
    try:
        starts = interleave(rounds, {
            "ours_scale": lambda: {"s": restart(big)},
            "ours_small": lambda: {"s": restart(small)},
            "jupyterhub_1000_users": lambda: {"s": restart_hub(hub)},
        })
        hub_user = "hubuser00005"
        targets = {}
        for label, server, session_id in (("ours_scale", big, ids[3]), ("ours_small", small, small_ids[3])):
            token = server.token(names[0])
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            url = f"{server.url}/api/get_session"
            targets[f"{label}_list"] = lambda u=url, h=headers: wrk(u, 16, headers=h, method="POST", body=rpc_body())
            targets[f"{label}_single"] = lambda u=url, h=headers, s=session_id: wrk(
                u, 16, headers=h, method="POST", body=rpc_body(session_id=s))
        hub_headers = {"Authorization": f"token {hub.token}"}
        targets["jupyterhub_single"] = lambda: wrk(f"{hub.hub_url}/hub/api/users/{hub_user}", 16, headers=hub_headers)
        for run_once in targets.values():
            run_once()
        loads = interleave(rounds, targets)
        assert big.proc is not None and small.proc is not None
        result: dict[str, Any] = {
            "startup_s": {name: summary([item["s"] for item in items], 3) for name, items in starts.items()},
            "get_session": {name: summarize_runs(items, WRK_KEYS) for name, items in loads.items()},
            "rss_mib": {"ours_scale": rss_mib(big.proc.pid), "ours_small": rss_mib(small.proc.pid), **{
                f"jupyterhub_1000_users_{part}": value for part, value in hub.rss_mib().items()}},
        }
        single = result["get_session"]
        result["ratio_p99_single_scale_small"] = round(
            single["ours_scale_single"]["p99_ms"]["median"] / single["ours_small_single"]["p99_ms"]["median"], 2)
        return result
    finally:
        big.stop()
        small.stop()


def restart_hub(hub: Hub) -> float:
    hub.stop()
    return hub.start()
