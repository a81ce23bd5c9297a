"""The clients of the load and soak test (tests/test_load_soak.py), on one aiohttp client in the test process.

Every call checks its answer (status, body, the sessions still running, a stream's exact output) and records
a wrong one in ``Tally.errors`` instead of raising, so one run reports every error; latencies are kept per
call kind for p50/p99. Each job launched gets a follower at once, and a launcher waits for a free follower
slot: jobs are launched as fast as they are followed, never more running than there are followers.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# A small real job: five lines over ~1 s, one on stderr, and an exit code that is not 0 (so it is checked).
JOB_SCRIPT = 'for i in 1 2 3 4 5; do echo "$0 line $i"; sleep 0.2; done; echo "$0 done" >&2; exit 3'
JOB_EXIT = 3
# A job that runs until stopped: the first line says it is running; SIGTERM ends it with 128 + 15.
SLEEPER_SCRIPT = "echo ready; exec sleep 120"
SLEEPER_EXIT = 143
SESSION_START_TIMEOUT = 180.0  # a loaded 2-core machine starts JupyterLab in seconds; this only bounds a hang


def job_output(tag: str) -> tuple[str, str]:
    """What a JOB_SCRIPT job run with ``tag`` writes: (stdout, stderr)."""
    return "".join(f"{tag} line {i}\n" for i in range(1, 6)), f"{tag} done\n"


@dataclass
class Tally:
    """Latencies per call kind, and every wrong answer."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)

    def record(self, kind: str, began: float) -> None:
        self.seconds[kind].append(time.perf_counter() - began)

    def error(self, kind: str, what: object) -> None:
        self.errors.append(f"{kind}: {str(what)[:400]}")

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: the count of calls, p50 and p99 in ms."""
        out = {}
        for kind, values in sorted(self.seconds.items()):
            cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
            out[kind] = {"count": len(values), "p50_ms": round(statistics.median(values) * 1000, 1),
                         "p99_ms": round(cuts[98] * 1000, 1)}
        return out


@dataclass
class Load:
    """The shared state of one run: the server, the user, the five sessions, and what was made."""

    base: str
    token: str
    labs: list[dict[str, Any]]  # the running JupyterLab sessions the load reads and proxies to
    deadline: float
    http: aiohttp.ClientSession
    tally: Tally = field(default_factory=Tally)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> tag, for every launch_job that answered
    followed: set[str] = field(default_factory=set)
    stopped: list[str] = field(default_factory=list)  # the churn's sleepers, stopped with stop_job
    sessions: list[str] = field(default_factory=list)  # the churn's sessions
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(16))  # followers at once
    following: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def rpc(self, kind: str, method: str, **kwparams: Any) -> Any:
        """The call's ``result``; None (and an error recorded) for any other answer."""
        began = time.perf_counter()
        body = {"method": method, "kwparams": kwparams}
        async with self.http.post(f"{self.base}/api/{method}", json=body, headers=self.auth) as resp:
            text = await resp.text()
        answer = json.loads(text) if resp.status == 200 else {}
        if "result" not in answer:
            self.tally.error(kind, f"{method}: {resp.status} {text}")
            return None
        self.tally.record(kind, began)
        return answer["result"]


async def forever(load: Load, kind: str, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` until the deadline; an exception is an error of the run, not the end of the client."""
    while load.running():
        try:
            await step()
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            load.tally.error(kind, repr(exc))


async def list_sessions(load: Load) -> None:
    result = await load.rpc("get_session (list)", "get_session")
    if result is not None:
        states = {s["id"]: s["activity_state"] for s in result["sessions"]}
        if any(states.get(lab["id"]) != "running" for lab in load.labs):
            load.tally.error("get_session (list)", f"a session is not running: {states}")


async def one_session(load: Load) -> None:
    lab = random.choice(load.labs)
    result = await load.rpc("get_session (single)", "get_session", session_id=lab["id"])
    if result is not None and [s["activity_state"] for s in result["sessions"]] != ["running"]:
        load.tally.error("get_session (single)", result)


async def proxied(load: Load) -> None:
    """A small read of a session's own API through /s/<id>/: its status or its home's listing."""
    lab = random.choice(load.labs)
    path, key = random.choice((("api/status", "started"), ("api/contents", "content")))
    kind = f"proxy GET {path}"
    began = time.perf_counter()
    async with load.http.get(f"{load.base}{lab['url']}{path}", headers=load.auth) as resp:
        text = await resp.text()
    if resp.status != 200 or key not in json.loads(text):
        load.tally.error(kind, f"{resp.status} {text}")
        return
    load.tally.record(kind, began)


async def launcher(load: Load) -> None:
    """Launch a job and hand it at once to a follower of its own (one of ``follow`` slots: a launcher waits
    for a free one), so every job's output is followed live, from before its first line to its end."""
    await load.slots.acquire()
    tag = f"job{len(load.jobs)}-{random.getrandbits(32):08x}"
    try:
        result = await load.rpc("launch_job", "launch_job", job={"name": "load", "command": JOB_SCRIPT, "args": [tag]})
    except BaseException:
        load.slots.release()
        raise
    if result is None:
        load.slots.release()
        return
    load.jobs[result["job"]["id"]] = tag
    task = asyncio.create_task(follower(load, result["job"]["id"]))
    load.following.add(task)
    task.add_done_callback(load.following.discard)


async def stream(load: Load, job_id: str, kind: str) -> tuple[dict[str, str], float | None]:
    """Follow a job's NDJSON stream to its end: the text per output type, and when the first chunk came."""
    began, first = time.perf_counter(), None
    texts: dict[str, str] = defaultdict(str)
    body = {"method": "get_job_output", "kwparams": {"job_id": job_id}}
    async with load.http.post(f"{load.base}/api/get_job_output", json=body, headers=load.auth) as resp:
        if resp.status != 200 or not resp.headers["content-type"].startswith("application/x-ndjson"):
            load.tally.error(kind, f"{job_id}: {resp.status} {await resp.text()}")
            return texts, None
        async for raw in resp.content:
            chunk = json.loads(raw)
            if "error" in chunk:
                load.tally.error(kind, f"{job_id}: {chunk}")
                return texts, None
            first = first or time.perf_counter() - began
            texts[chunk["outputType"]] += chunk["output"]
    return texts, first


async def follow_one(load: Load, job_id: str) -> None:
    began = time.perf_counter()
    texts, first = await stream(load, job_id, "get_job_output")
    if first is None:
        return
    expected = job_output(load.jobs[job_id])
    if (texts["stdout"], texts["stderr"]) != expected:
        load.tally.error("get_job_output", f"{job_id}: incomplete output {dict(texts)}, expected {expected}")
        return
    load.followed.add(job_id)
    load.tally.seconds["get_job_output (first chunk)"].append(first)
    load.tally.record("get_job_output (whole stream, a ~1 s job)", began)


async def follower(load: Load, job_id: str) -> None:
    try:
        await follow_one(load, job_id)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
        load.tally.error("get_job_output", f"{job_id}: {exc!r}")
    finally:
        load.slots.release()


async def loop_lag(load: Load) -> None:
    """How late this process's own event loop wakes (not a call): the share of the latencies that is the
    client's, when the 64 clients and the server share two cores."""
    while load.running():
        began = time.perf_counter()
        await asyncio.sleep(0.05)
        load.tally.seconds["(client event loop lag)"].append(time.perf_counter() - began - 0.05)
