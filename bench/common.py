"""Shared pieces of the benchmarks: statistics, the wrk load generator, a throwaway POSIX user, processes."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import WORKBENCH, Server, clean_env, free_port, temporary_posix_user

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WRK_SCRIPT = ROOT / "bench" / "wrk_json.lua"
JUPYTER_BIN = Path(os.environ.get("OWB_IDE_PREFIX", "/opt/openworkbench")) / "jupyter" / "bin"
# One wrk thread: wrk is C and needs a fraction of a core; the rest of the 2 cores goes to the servers.
WRK_SECONDS = int(os.environ.get("OWB_BENCH_SECONDS", "3"))
ROUNDS = int(os.environ.get("OWB_BENCH_ROUNDS", "3"))

__all__ = ["Server", "free_port"]


# -- statistics ----------------------------------------------------------------------------------
def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """Median, min and max of one measure over its rounds, with the rounds themselves."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "rounds": [round(v, digits) for v in values]}


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3), "n": len(ordered)}


def interleave(rounds: int, targets: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Round r of every target before round r+1 of any: drifts (caches, the other core) hit all alike."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, run in targets.items():
            out[name].append(run())
    return out


def summarize_runs(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    return {key: summary([run[key] for run in runs]) for key in keys}


# -- load: wrk in its own process ---------------------------------------------------------------------
def wrk(url: str, connections: int, seconds: int = WRK_SECONDS, headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes | None = None) -> dict[str, Any]:
    """One wrk run (1 thread, ``connections`` keep-alive clients, ``seconds`` long): req/s, p50/p99 in ms."""
    with tempfile.NamedTemporaryFile(suffix=".body") as body_file:
        body_file.write(body or b"")
        body_file.flush()
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_SCRIPT)]
        for name, value in (headers or {}).items():
            cmd += ["-H", f"{name}: {value}"]
        cmd += [url, "--", method] + ([body_file.name] if body else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    line = next(text for text in proc.stdout.splitlines() if text.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    if raw["errors"] or raw["status_errors"] or not raw["requests"]:
        raise RuntimeError(f"wrk {url}: errors in the run: {raw}")
    return {"req_s": raw["requests"] / (raw["duration_us"] / 1e6), "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "max_ms": raw["max_us"] / 1000, "requests": raw["requests"],
            "bytes_per_response": raw["bytes"] // raw["requests"]}


WRK_KEYS = ("req_s", "p50_ms", "p99_ms")


# A throwaway unprivileged user (Jupyter refuses root; sessions run as their user): the tests' own helper.
posix_user = functools.partial(temporary_posix_user, "owbb")


def as_user(user: pwd.struct_passwd, argv: list[str], env: dict[str, str], log: Path,
            cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` as ``user`` in a new process group (stopped as a whole by ``stop_group``)."""
    base = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "SHELL": "/bin/sh",
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.Popen(argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[], env={**base, **env},
                            cwd=cwd or user.pw_dir, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def jupyter_lab_tcp(user: pwd.struct_passwd, port: int, token: str, log: Path) -> subprocess.Popen[bytes]:
    """The /opt JupyterLab our sessions run, started the bare way: TCP on loopback with a token."""
    argv = [str(JUPYTER_BIN / "jupyter-lab"), "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={user.pw_dir}"]
    return as_user(user, argv, {"JUPYTER_TOKEN": token}, log)


# -- processes and readiness -------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(kib / 1024, 1)


def wait_jupyter_status(client: httpx.Client, url: str, headers: dict[str, str], timeout: float = 90,
                        interval: float = 0.02) -> float:
    """Poll a Jupyter ``api/status`` until it answers 200 with its own JSON (not a proxy's or hub's page);
    return the monotonic time of that answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            response = client.get(url, headers=headers, timeout=5)
            if response.status_code == 200 and "started" in _json_or_empty(response):
                return time.monotonic()
        time.sleep(interval)
    raise RuntimeError(f"{url} never answered 200")


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def start_timed(server: Server, interval: float = 0.005) -> float:
    """``Server.start`` with a fine poll: seconds from exec to the first answer of ``/api/version``."""
    server.config_file.write_text(server.config_text)
    log = open(server.data_dir.parent / f"{server.data_dir.name}.log", "ab")  # noqa: SIM115 (the server owns it)
    began = time.monotonic()
    server.proc = subprocess.Popen(
        [WORKBENCH, "serve", "--port", str(server.port), "--data-dir", str(server.data_dir),
         "--config", str(server.config_file)], stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    with httpx.Client() as client:
        while time.monotonic() - began < 60:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited: {server.log()}")
            with contextlib.suppress(httpx.TransportError):
                client.get(f"{server.url}/api/version", timeout=1)
                return time.monotonic() - began
            time.sleep(interval)
    raise RuntimeError(f"server did not start: {server.log()}")


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
