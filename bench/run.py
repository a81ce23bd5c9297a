"""`make bench`: every measure, ours against the peer (JupyterHub + CHP) and the bare baseline, in one run.

Writes bench/results/<measure>.json (raw rounds) and all.json, then the table in docs/performance.md.
A measure that fails is recorded as such and the run goes on; the exit status is non-zero then.

Usage: PYTHONPATH=. .venv/bin/python -m bench.run [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import api, arenas, jobs_scale, lb, live, local_jobs, pages, report, scale, sessions
from bench.common import JUPYTER_BIN, RESULTS, ROOT, ROUNDS, posix_user, write_result
from bench.hub import Hub

MEASURES = ("sessions", "api", "scale", "local_jobs", "slurm", "jobs_scale", "pages", "live", "lb", "arenas")


def versions() -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
        except OSError:
            return "?"

    return {
        "jupyterhub": out([str(ROOT / ".bench-venv" / "bin" / "jupyterhub"), "--version"]),
        "configurable-http-proxy": out([str(ROOT / ".bench-node" / "node_modules" / ".bin" / "configurable-http-proxy"),
                                        "--version"]),
        "jupyterlab": out([str(JUPYTER_BIN / "jupyter-lab"), "--version"]),
        "python": platform.python_version(),
        "wrk": out(["wrk", "-v"]).splitlines()[0] if out(["wrk", "-v"]) else "?",
        "cpus": str(os.cpu_count()),
    }


def slurm(user: str) -> dict[str, Any]:
    """On the throwaway cluster of scripts/with-slurm.sh, in a process of its own."""
    out = Path(tempfile.mkdtemp(prefix="owb-bench-")) / "slurm.json"
    subprocess.run([str(ROOT / "scripts" / "with-slurm.sh"), str(ROOT / ".venv" / "bin" / "python"), "-m",
                    "bench.slurm", user, str(out)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   check=True, timeout=900)
    return dict(json.loads(out.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", choices=MEASURES, default=list(MEASURES))
    args = parser.parse_args()
    began = time.monotonic()
    results: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "rounds": ROUNDS,
                               "versions": versions()}
    failed: list[str] = []

    def step(name: str, work: Callable[[], dict[str, Any]]) -> None:
        if name not in args.only:
            return
        print(f"bench: {name} ...", flush=True)
        started = time.monotonic()
        try:
            results[name] = work()
        except Exception:
            failed.append(name)
            results[name] = {"error": traceback.format_exc(limit=3)}
            print(results[name]["error"], flush=True)
        results[name]["seconds"] = round(time.monotonic() - started, 1)
        write_result(name, results[name])
        print(f"bench: {name} took {results[name]['seconds']} s", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="owb-bench-"))
    workdir.chmod(0o711)  # the bench user's Jupyter logs live here; nothing secret
    with posix_user() as user:
        hub = Hub(workdir / "hub")
        hub.start()
        try:
            hub.add_users([user.pw_name])
            step("sessions", lambda: sessions.run(user, hub, workdir, ROUNDS))
            step("api", lambda: api.run(hub, workdir, ROUNDS))  # leaves the hub with 1,000 users
            if "api" not in args.only and "scale" in args.only:
                api.fill_hub(hub, 1000)
            step("scale", lambda: scale.run(hub, workdir, ROUNDS))
        finally:
            hub.stop()
        step("local_jobs", lambda: local_jobs.run(1000, 100, ROUNDS))
        step("slurm", lambda: slurm(user.pw_name))
        step("jobs_scale", lambda: jobs_scale.run(user, workdir, ROUNDS))  # a hub of its own, sized per row
        step("pages", lambda: pages.run(user.pw_name, workdir, ROUNDS))
        step("live", lambda: live.run(user.pw_name, workdir))  # idle homepages: old poll vs long-poll
        step("lb", lambda: lb.in_process_of_its_own(user.pw_name))  # writes its own block of performance.md
        step("arenas", lambda: arenas.run_and_write(user, workdir, ROUNDS))  # and so does this one
    results["total_s"] = round(time.monotonic() - began, 1)
    if set(args.only) == set(MEASURES):
        write_result("all", results)
        report.write(results)
    print(f"bench: done in {results['total_s']} s; results in {RESULTS}", flush=True)
    if failed:
        raise SystemExit(f"bench: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
