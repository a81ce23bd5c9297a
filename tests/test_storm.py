"""Launch storms are queued, not refused: sessions.max_concurrent_starts, the start queue, and its places.

The storm is real: concurrent clients call launch_session on a real server, every session is a real JupyterLab
run as a real POSIX user through the real launch path, and the server is restarted with sessions queued.
``STORM_SESSIONS`` sets the storm's size: 20 in ``make test`` (its time budget), 100 in ``make soak`` (as issue 14
asks).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pwd
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openworkbench.services.start_queue import StartLine, queued_detail, was_queued
from tests.conftest import Server, temporary_posix_user
from tests.sessions_helpers import FINAL, launch, session, session_server, wait_state

# A storm of session starts timed with a p99 bound: alone, after the parallel phase of `make test`.
pytestmark = pytest.mark.serial

STORM = int(os.environ.get("STORM_SESSIONS", "20"))  # make soak: 100, as issue 14 asks
SLOTS = min(4, os.cpu_count() or 1)  # the server's default: one start per CPU
PLACE = re.compile(r"^Queued to start: (\d+) ahead$")
START_PHASE = ("pending", "starting")  # seen from outside: a start slot is held (its IDE job exists, not ready)


# -- the queue's core ----------------------------------------------------------------------------
def test_start_line_is_first_come_first_served() -> None:
    line = StartLine(2)
    assert [line.join(name) for name in "abcde"] == [True, True, False, False, False]
    assert line.places() == {"c": 0, "d": 1, "e": 2}
    assert line.leave("b") == ["c"] and line.places() == {"d": 0, "e": 1}
    assert line.withdraw("d") and not line.withdraw("d") and not line.withdraw("a")  # a starts: not withdrawn
    assert line.places() == {"e": 0}
    assert line.leave("a") == ["e"] and line.leave("c") == [] and line.starting == {"e"}
    assert line.join("f") and line.most_starting == 2


def test_start_line_adopted_starts_pass_the_bound_and_hold_back_the_queue() -> None:
    line = StartLine(1)
    assert line.join("a") and line.join("b", adopted=True) and not line.join("c")
    assert line.most_starting == 2
    assert line.leave("a") == [] and line.leave("b") == ["c"]  # c waits until both left: one slot


def test_queued_text_round_trips() -> None:
    assert queued_detail(7) == "Queued to start: 7 ahead" and was_queued(queued_detail(0))
    assert not was_queued("") and not was_queued("Pending: waiting for resources")


# -- real storms -------------------------------------------------------------------------------
pytestmark_ides = pytest.mark.skipif(not Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists(),
                                     reason="IDEs not installed: run scripts/install-ides.sh (make test does)")


@pytest.fixture
def storm_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("creating POSIX users needs root")
    with temporary_posix_user("owbs") as user:
        yield user


def user_processes(user: pwd.struct_passwd) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-u", str(user.pw_uid)], capture_output=True, text=True)
    return out.stdout.splitlines()


class Sampler(threading.Thread):
    """Polls the storm user's sessions: every place each one showed, and the most seen in their start phase."""

    def __init__(self, server: Server, token: str) -> None:
        super().__init__(daemon=True)
        self.server, self.token = server, token
        self.places: dict[str, list[int]] = {}
        self.most_starting = 0
        self.polls = 0
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.done.is_set():
                answer = client.post(f"{self.server.url}/api/get_session", json={"method": "get_session",
                                     "kwparams": {}}, headers={"Authorization": f"Bearer {self.token}"})
                sessions = answer.json()["result"]["sessions"]
                self.polls += 1
                self.most_starting = max(self.most_starting,
                                         sum(item["activity_state"] in START_PHASE for item in sessions))
                for item in sessions:
                    if (match := PLACE.match(item["status_detail"])) is not None:
                        assert item["activity_state"] == "launching", item  # queued: still what comes before a start
                        seen = self.places.setdefault(item["id"], [])
                        if not seen or seen[-1] != int(match[1]):
                            seen.append(int(match[1]))
                self.done.wait(0.2)


def time_get_session(url: str, token: str, ready: Any, stop: Any, results: Any) -> None:
    """Another user's client, in a process of its own (no GIL shared with the storm's clients): get_session of
    its own sessions, timed, one call every 20 ms until ``stop`` is set; the times go to ``results``."""
    times: list[float] = []
    with httpx.Client(timeout=60) as client:
        ready.set()
        while not stop.is_set():
            began = time.perf_counter()
            answer = client.post(f"{url}/api/get_session", json={"method": "get_session", "kwparams": {}},
                                 headers={"Authorization": f"Bearer {token}"})
            times.append(time.perf_counter() - began)
            if answer.status_code != 200 or not answer.json()["result"]["sessions"]:
                times.append(float("inf"))  # a wrong answer fails the p99 as surely as a slow one
            stop.wait(0.02)
    results.put(times)


class Latency:
    def __init__(self, server: Server, token: str) -> None:
        context = multiprocessing.get_context("spawn")
        ready, self.stop, self.results = context.Event(), context.Event(), context.Queue()
        self.process = context.Process(target=time_get_session,
                                       args=(server.url, token, ready, self.stop, self.results))
        self.process.start()
        assert ready.wait(120), "the timing client did not start"  # a spawned Python takes seconds when busy

    def times(self) -> list[float]:
        self.stop.set()
        times: list[float] = self.results.get(timeout=60)
        self.process.join(10)
        return times


def measure(server: Server, token: str, seconds: float) -> list[float]:
    latency = Latency(server, token)
    time.sleep(seconds)
    return latency.times()


async def launch_all(server: Server, token: str, count: int) -> list[dict[str, Any]]:
    """``count`` launch_session calls at once, each on its own connection."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one(n: int) -> dict[str, Any]:
            answer = await client.post(f"{server.url}/api/launch_session", headers={"Authorization": f"Bearer {token}"},
                                       json={"method": "launch_session",
                                             "kwparams": {"workbench": "JupyterLab", "name": f"storm {n}"}})
            assert answer.status_code == 200 and "result" in answer.json(), answer.text  # never refused (no 429)
            return dict(answer.json()["result"])
        return await asyncio.gather(*(one(n) for n in range(count)))


def wait_all(server: Server, token: str, ids: list[str], states: tuple[str, ...],
             timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = server.rpc("get_session", token, session_id=",".join(ids))["sessions"]
        if all(item["activity_state"] in states for item in found) and len(found) == len(ids):
            return list(found)
        if time.monotonic() > deadline:
            late = [(item["id"], item["activity_state"], item["status_detail"]) for item in found
                    if item["activity_state"] not in states]
            raise AssertionError(f"{len(late)} sessions never reached {states}: {late[:10]}")
        time.sleep(0.5)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@pytestmark_ides
@pytest.mark.timeout(1800)  # ~2 min on a quiet 2-core machine; far more when it is shared
def test_a_launch_storm_is_queued_not_refused(tmp_path: Path, storm_user: pwd.struct_passwd,
                                              posix_user: pwd.struct_passwd) -> None:
    extra = f"max_per_user = {STORM + 10}\nmax_concurrent_starts = {SLOTS}\n"
    with session_server(tmp_path / "data", extra, start_timeout_s=600) as srv:
        token, other = srv.token(storm_user.pw_name), srv.token(posix_user.pw_name)
        own = launch(srv, other, "JupyterLab", name="the other user's")
        wait_state(srv, other, own["id"], ("running",), timeout=300)
        quiet = measure(srv, other, 5)  # the same client before the storm: what the machine gives now
        sampler, latency = Sampler(srv, token), Latency(srv, other)
        sampler.start()
        began = time.monotonic()
        started = asyncio.run(launch_all(srv, token, STORM))
        ids = [item["id"] for item in started]
        ended = wait_all(srv, token, ids, ("running", "failed"), timeout=60 + 12 * STORM)
        all_running = time.monotonic() - began
        times = latency.times()
        sampler.done.set()
        sampler.join()

        failed = [(item["id"], item["status_detail"]) for item in ended if item["activity_state"] == "failed"]
        p50, p99 = statistics.median(times), percentile(times, 0.99)
        deepest = max((max(seen) for seen in sampler.places.values()), default=-1)
        print(f"\nstorm of {STORM}: all running or failed after {all_running:.1f} s ({len(failed)} failed); "
              f"get_session p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms over {len(times)} calls "
              f"(before the storm: p50 {statistics.median(quiet) * 1000:.1f} ms, "
              f"p99 {percentile(quiet, 0.99) * 1000:.1f} ms); "
              f"most seen starting at once {sampler.most_starting}; "
              f"deepest place {deepest}; "
              f"{sampler.polls} samples; load {os.getloadavg()}")
        assert all(why for _, why in failed), failed  # a failure says why
        assert len(failed) <= STORM // 20, failed  # the queue is there so that starts do not time out together
        # Places were shown, and they only ever went down; the last in line saw most of the storm ahead.
        assert sampler.places, "no session was seen queued"
        assert all(seen == sorted(seen, reverse=True) for seen in sampler.places.values()), sampler.places
        assert any(len(seen) >= 3 for seen in sampler.places.values()), sampler.places
        assert deepest >= STORM // 2
        assert 0 < sampler.most_starting <= SLOTS
        running = [item for item in ended if item["activity_state"] == "running"]
        for item in running[:: max(1, len(running) // 3)]:  # a few of them, through the proxy
            status = srv.client.get(srv.url + item["url"] + "api/status", headers={"Authorization": f"Bearer {token}"})
            assert status.status_code == 200 and "started" in status.json()

        srv.rpc("stop_session", token, session_ids=",".join(ids))
        wait_all(srv, token, ids, FINAL, timeout=300)
        deadline = time.monotonic() + 30
        while user_processes(storm_user) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert user_processes(storm_user) == []
        srv.rpc("stop_session", other, session_ids=own["id"])
        wait_state(srv, other, own["id"], ("finished",))
        print(f"stopped all in {time.monotonic() - began - all_running:.1f} s")
        assert p99 < 0.050, f"get_session p99 {p99 * 1000:.1f} ms during the storm"  # issue 14 asks for it


def slow_failing_hook(user: pwd.struct_passwd) -> list[dict[str, str]]:
    """A start hook that holds a start slot for a while, then fails its session: a slot taken without an IDE."""
    hook = Path(user.pw_dir) / "slow-hook.sh"
    hook.write_text("#!/bin/sh\nsleep 15\nexit 3\n")
    hook.chmod(0o755)
    return [{"exe": str(hook)}]


def wait_detail(srv: Server, token: str, session_id: str, detail: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (current := session(srv, token, session_id))["status_detail"] != detail:
        assert time.monotonic() < deadline, (detail, current)
        time.sleep(0.1)
    return current


@pytestmark_ides
@pytest.mark.timeout(900)  # ~30 s on a quiet machine
def test_queued_sessions_stop_at_once_survive_a_restart_and_resume_in_turn(tmp_path: Path,
                                                                           storm_user: pwd.struct_passwd) -> None:
    extra = "max_per_user = 20\nmax_concurrent_starts = 1\n"
    hook = slow_failing_hook(storm_user)
    with session_server(tmp_path / "data", extra, start_timeout_s=600) as srv:
        token = srv.token(storm_user.pw_name)
        head = launch(srv, token, "JupyterLab", name="head", start_hooks=hook)["id"]
        queued = [launch(srv, token, "JupyterLab", name=f"q{n}")["id"] for n in range(3)]
        for ahead, sid in enumerate(queued):
            assert wait_detail(srv, token, sid, queued_detail(ahead))["activity_state"] == "launching"

        # A stop of a queued session takes it out of the line at once; the one behind it moves up.
        srv.rpc("stop_session", token, session_ids=queued[1])
        gone = wait_state(srv, token, queued[1], ("canceled",), timeout=10)
        assert gone["status_detail"] == "stopped while queued to start"
        wait_detail(srv, token, queued[2], queued_detail(1), timeout=10)

        # The server dies with two sessions queued; the restarted one starts them. The start in flight (its
        # hook ran) ends with a reason.
        srv.stop(signal.SIGKILL)
        srv.start()
        waiting = [queued[0], queued[2]]
        assert all(wait_state(srv, token, sid, ("running",), timeout=300)["status_detail"] == "" for sid in waiting)
        failed = wait_all(srv, token, [head], ("failed",), timeout=10)[0]
        assert failed["status_detail"] == "the server restarted while it launched"

        # Resume waits its turn too, as resuming.
        srv.rpc("stop_session", token, session_ids=waiting[0], suspend_session=True)
        wait_state(srv, token, waiting[0], ("suspended",), timeout=120)
        holder = launch(srv, token, "JupyterLab", name="holder", start_hooks=hook)["id"]
        wait_state(srv, token, holder, ("launching",))
        srv.rpc("resume_session", token, session_id=waiting[0])
        assert wait_detail(srv, token, waiting[0], queued_detail(0))["activity_state"] == "resuming"
        assert "start hook" in wait_all(srv, token, [holder], ("failed",), timeout=120)[0]["status_detail"]
        wait_state(srv, token, waiting[0], ("running",), timeout=300)

        srv.rpc("stop_session", token, session_ids=",".join(waiting))
        wait_all(srv, token, waiting, FINAL, timeout=120)
        deadline = time.monotonic() + 60  # the hooks' sleeps end by themselves
        while user_processes(storm_user) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert user_processes(storm_user) == []
