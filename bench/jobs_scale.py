"""Jobs at scale (issue 13): the poll job clients make, side by side with JupyterHub's user list at the same N
and with the bare uvicorn baseline answering our exact bytes.

One store, written directly (launching 110,000 jobs would measure launching): users with 300, 1,000 and
10,000 jobs in the active list (ended within ``jobs.expiry_hours``, so the monitor has nothing to poll and
the list is what a poller gets), the last of them also with 100,000 ended jobs, 1,000 a day over 100 days.

- ``get_session(include_all_jobs)`` at 300, 1,000, 10,000 active jobs, 16 clients (JupyterHub:
  ``GET /hub/api/users`` with as many users, on a hub of its own; 1 client at 10,000, where 16 time out);
- the ``timestamp`` poll: 10 real jobs launched after the poller's last answer, among the 10,000;
- ``get_historical_session`` with a one-day window over the 100,000 ended jobs (1 and 16 clients);
- the server's resident memory after all of it.
"""

from __future__ import annotations

import json
import pwd
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table

from bench.api import Bare
from bench.common import WRK_KEYS, Server, interleave, rss_mib, summarize_runs, wrk
from bench.hub import Hub
from bench.seed import store_url
from openworkbench.models import JobSpec
from openworkbench.services.accounts import Accounts
from openworkbench.store import Store
from openworkbench.store.schema import Job, utcnow

SIZES = (300, 1000, 10000)
ENDED, PER_DAY = 100_000, 1000
CHANGES = 10
CONFIG = "[jobs]\nexpiry_hours = 24\n"  # the seeded list must not rotate out while the measure runs


def body(method: str, **kwparams: Any) -> bytes:
    return json.dumps({"method": method, "kwparams": kwparams}).encode()


def seed(data_dir: Path, users: dict[str, tuple[int, int]]) -> None:
    """name -> (jobs in the active list, ended jobs before it), written with Core inserts in batches."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store(store_url(data_dir))
    store.migrate()
    accounts = Accounts(store)
    now = utcnow()
    for name, (active, ended) in users.items():
        user_id = accounts.ensure_user(name)
        spec = JobSpec.model_validate({"name": "job", "exe": "/bin/true", "user": name, "cluster": "Local",
                                       "tags": ["bench"]}).model_dump(mode="json")
        ends = [now - timedelta(minutes=50) + timedelta(seconds=3000 * n / max(active, 1)) for n in range(active)]
        ends += [now - timedelta(days=1, seconds=86400 * n / PER_DAY) for n in range(ended)]
        rows = [_row(user_id, spec, end) for end in ends]
        for start in range(0, len(rows), 5000):
            with store.transaction() as conn:
                conn.execute(cast(Table, Job.__table__).insert(), rows[start:start + 5000])
    store.dispose()


def _row(user_id: int, spec: dict[str, Any], end: Any) -> dict[str, Any]:
    job_id = secrets.token_hex(8)
    return {"id": job_id, "user_id": user_id, "session_id": None, "cluster": "Local", "name": "job", "spec": spec,
            "status": "Finished", "status_message": "", "exit_code": 0, "pid": 4242, "host": "localhost",
            "stdout_file": f"/tmp/jobs/{job_id}/stdout", "stderr_file": f"/tmp/jobs/{job_id}/stderr",
            "cluster_state": {}, "stop_requested": None, "submission_time": end - timedelta(seconds=5),
            "last_update_time": end, "end_time": end, "output_purged": None}


def post(server: Server, token: str, payload: bytes, method: str = "get_session") -> bytes:
    response = server.client.post(f"{server.url}/api/{method}", content=payload, headers=headers(token))
    assert response.status_code == 200 and b'"error"' not in response.content[:20], response.text[:300]
    return response.content


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def launch_changes(server: Server, token: str, since: float) -> None:
    """CHANGES real jobs, waited for until final: the only jobs written after ``since``."""
    launched = {json.loads(post(server, token, body("launch_job", job={"name": f"change {n}", "exe": "/bin/true"}),
                                "launch_job"))["result"]["job"]["id"] for n in range(CHANGES)}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = json.loads(post(server, token, body("get_session", include_all_jobs=True, timestamp=since)))
        if {job["id"] for job in jobs["result"]["jobs"] if job["status"] in ("Finished", "Failed")} >= launched:
            return
        time.sleep(0.2)
    raise RuntimeError("the changed jobs never finished")


def hub_list(hub: Hub, size: int, connections: int) -> dict[str, Any]:
    have = hub.user_count()
    hub.add_users([f"jobsuser{n:05d}" for n in range(have, size)])
    return wrk(f"{hub.hub_url}/hub/api/users", connections, headers={"Authorization": f"token {hub.token}"})


def run(user: pwd.struct_passwd, workdir: Path, rounds: int) -> dict[str, Any]:
    data = workdir / "jobs-scale" / "data"
    names = {size: f"jobs{size}" for size in SIZES[:-1]} | {SIZES[-1]: user.pw_name}
    began = time.monotonic()
    seed(data, {names[size]: (size, ENDED if size == SIZES[-1] else 0) for size in SIZES})
    result: dict[str, Any] = {"seed_s": round(time.monotonic() - began, 1)}
    server = Server(data, config_text=CONFIG).start()
    hub, bare = Hub(workdir / "hub-jobs"), None
    hub.start()
    try:
        tokens = {size: server.token(names[size]) for size in SIZES}
        big = tokens[SIZES[-1]]
        poll = body("get_session", include_all_jobs=True)
        answers = {f"/list{size}": post(server, tokens[size], poll) for size in SIZES}
        since = json.loads(answers[f"/list{SIZES[-1]}"])["result"]["timestamp"]
        launch_changes(server, big, since)
        delta = body("get_session", include_all_jobs=True, timestamp=since)
        answers["/delta"] = post(server, big, delta)
        assert len(json.loads(answers["/delta"])["result"]["jobs"]) == CHANGES
        day_end = utcnow() - timedelta(days=10)
        window = body("get_historical_session", include_jobs=True, filter_time_end=day_end.isoformat(),
                      filter_time_begin=(day_end - timedelta(days=1)).isoformat())
        answers["/history"] = post(server, big, window, "get_historical_session")
        result["history_jobs_in_window"] = len(json.loads(answers["/history"])["result"]["jobs"])
        bare = Bare(workdir / "jobs-scale", answers)
        rpc = f"{server.url}/api/get_session"
        for size in SIZES:
            c_hub = 1 if size == SIZES[-1] else 16
            hub_list(hub, size, c_hub)  # fills the hub to N users (and warms it)
            targets = {
                "ours": lambda s=size: wrk(rpc, 16, headers=headers(tokens[s]), method="POST", body=poll),
                "hub": lambda c=c_hub: wrk(f"{hub.hub_url}/hub/api/users", c,
                                           headers={"Authorization": f"token {hub.token}"}),
                "bare": lambda s=size: wrk(f"{bare.url}/list{s}", 16, method="POST", body=poll),
            }
            result[f"list_{size}"] = _measured(targets, rounds, {"hub_connections": c_hub})
        history_url = f"{server.url}/api/get_historical_session"
        result["delta"] = _measured({
            "ours": lambda: wrk(rpc, 16, headers=headers(big), method="POST", body=delta),
            "bare": lambda: wrk(f"{bare.url}/delta", 16, method="POST", body=delta),
        }, rounds, {})
        result["history"] = _measured({
            "ours_c1": lambda: wrk(history_url, 1, headers=headers(big), method="POST", body=window),
            "ours": lambda: wrk(history_url, 16, headers=headers(big), method="POST", body=window),
            "bare_c1": lambda: wrk(f"{bare.url}/history", 1, method="POST", body=window),
            "bare": lambda: wrk(f"{bare.url}/history", 16, method="POST", body=window),
        }, rounds, {})
        assert server.proc is not None
        result["rss_mib"] = {"ours": rss_mib(server.proc.pid), **{f"hub_{part}": value
                                                                   for part, value in hub.rss_mib().items()}}
        result["store"] = {"active": sum(SIZES) + CHANGES, "ended": ENDED}
        return result
    finally:
        if bare is not None:
            bare.stop()
        hub.stop()
        server.stop()


def _measured(targets: dict[str, Any], rounds: int, extra: dict[str, Any]) -> dict[str, Any]:
    for run_once in targets.values():
        run_once()  # warm-up
    runs = interleave(rounds, targets)
    out: dict[str, Any] = {name: summarize_runs(items, WRK_KEYS) for name, items in runs.items()}
    for name, items in runs.items():
        out[name]["bytes_per_response"] = items[0]["bytes_per_response"]
    if "ours" in out and "bare" in out:
        out["ratio_ours_bare"] = round(out["ours"]["req_s"]["median"] / out["bare"]["req_s"]["median"], 3)
    if "ours" in out and "hub" in out:
        out["ratio_ours_hub"] = round(out["ours"]["req_s"]["median"] / out["hub"]["req_s"]["median"], 2)
    return {**out, **extra}
