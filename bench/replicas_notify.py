"""What the replicas' NOTIFY costs a launch: launch_job on one server on PostgreSQL, with the relay (a NOTIFY in
every job and session transaction, a listening thread) and without it (a copy of the package whose relay sends
and listens to nothing, first on PYTHONPATH), in interleaved rounds on fresh databases.

Usage: scripts/with-postgres.sh .venv/bin/python -m bench.replicas_notify [--jobs N] [--clients C] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import ROOT
from tests.conftest import Server, make_pg_database

# Appended to the copy's services/job_relay.py: nothing sent, nothing heard.
SILENCED = "\n\ndef send(conn, replica_id, items):  # noqa\n    return None\n\n\nRelay.start = lambda self: None\n"


def silenced_copy(where: Path) -> Path:
    shutil.copytree(ROOT / "src" / "openworkbench", where / "openworkbench")
    with open(where / "openworkbench" / "services" / "job_relay.py", "a") as handle:
        handle.write(SILENCED)
    return where


def one_round(jobs: int, clients: int, pythonpath: str | None) -> tuple[float, float, float]:
    """launch_job calls per second, and their p50 and p95 in ms."""
    env_before = os.environ.pop("PYTHONPATH", None)
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    data = Path(tempfile.mkdtemp(prefix="owb-bench-notify-"))
    server = Server(data / "data", database_url=make_pg_database()).start()
    try:
        token = server.token("root")
        latencies: list[float] = []
        counter = iter(range(jobs + 20))
        lock = threading.Lock()

        def client_loop() -> None:
            with httpx.Client(timeout=60) as client:
                while True:
                    with lock:
                        index = next(counter, None)
                    if index is None:
                        return
                    began = time.perf_counter()
                    response = client.post(f"{server.url}/api/launch_job", headers={"Authorization": f"Bearer {token}"},
                                           json={"method": "launch_job", "kwparams": {"job": {"name": f"n{index}",
                                                                                              "command": "true"}}})
                    assert response.status_code == 200, response.text
                    if index >= 20:  # the first 20: warm-up
                        latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - began
        ordered = sorted(latencies)
        return jobs / took, statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
        os.environ.pop("PYTHONPATH", None)
        if env_before is not None:
            os.environ["PYTHONPATH"] = env_before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        silent = str(silenced_copy(Path(tmp)))
        results: dict[str, list[tuple[float, float, float]]] = {"with relay": [], "without relay": []}
        for _ in range(args.rounds):
            for name, path in (("with relay", None), ("without relay", silent)):
                results[name].append(one_round(args.jobs, args.clients, path))
                rate, p50, p95 = results[name][-1]
                print(f"{name:14} {rate:6.1f} launches/s  p50 {p50:6.1f} ms  p95 {p95:6.1f} ms", flush=True)
    for name, rows in results.items():
        rate, p50, p95 = (statistics.median(row[i] for row in rows) for i in range(3))
        print(f"{name:14} median of rounds: {rate:6.1f} launches/s, p50 {p50:6.1f} ms, p95 {p95:6.1f} ms")


if __name__ == "__main__":
    main()
