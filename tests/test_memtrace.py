"""The opt-in tracemalloc snapshots of a running server (openworkbench/memtrace.py; docs/reliability.md)."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import stat
import time
import tracemalloc
from pathlib import Path

import pytest

from openworkbench.memtrace import frames_wanted, top_growth
from tests.conftest import Server
from tests.soak_helpers import trimmed


def test_off_unless_asked_for_with_a_number_of_frames() -> None:
    assert [frames_wanted(value) for value in (None, "", "0", "no", "-3", "1", "25", "5000")] == [
        0, 0, 0, 0, 0, 1, 25, 100]


def snapshots(folder: Path, count: int) -> list[Path]:
    deadline = time.monotonic() + 60
    while len(found := sorted(folder.glob("*.snapshot"), key=lambda path: path.stat().st_mtime)) < count:
        assert time.monotonic() < deadline, f"no snapshot in {folder}"
        time.sleep(0.1)
    return found


def test_sigusr2_writes_a_snapshot_the_server_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWB_TRACEMALLOC", "5")
    server = Server(tmp_path / "data").start()
    try:
        token = server.token("root", "admin")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGUSR2)
        first = snapshots(server.data_dir / "tracemalloc", 1)[0]
        for n in range(5):  # something to grow between the two
            server.rpc("launch_job", token, job={"name": f"t{n}", "command": "true"})
        server.proc.send_signal(signal.SIGUSR2)
        second = snapshots(server.data_dir / "tracemalloc", 2)[1]
        assert server.rpc("get_session", token)["sessions"] == []  # it still answers
        # Only the server's own user (or root) may read them: they hold the server's data.
        assert stat.S_IMODE(first.stat().st_mode) == 0o600
        assert stat.S_IMODE((server.data_dir / "tracemalloc").stat().st_mode) == 0o700
        assert tracemalloc.Snapshot.load(str(second)).traceback_limit == 5
        native = json.loads(second.with_suffix(".json").read_text())
        assert native["rss"] > native["traced"] > 0 and "sqlite" in native and "malloc_in_use" in native
        diff = top_growth(first, second, limit=5)
        assert diff[0].startswith("total traced:") and "KiB" in diff[1]
        # SIGUSR1: what malloc's trim gives back (a measurement), and the server goes on.
        trim = trimmed(server)
        assert trim["after"]["rss"] <= trim["before"]["rss"] + 1 and trim["after"]["malloc_in_use"] > 0
        assert server.rpc("get_session", token)["sessions"] == []
    finally:
        server.stop()


def arenas_after_load(tmp_path: Path, name: str, config: str) -> int:
    """A real server (traced with 1 frame, so SIGUSR2 reports malloc), 24 clients at once on calls that run in
    the worker threads, then the number of malloc arenas the server's process made."""
    server = Server(tmp_path / name, config_text=config).start()
    try:
        token = server.token("root", "admin")

        def calls(n: int) -> None:
            for _ in range(10):
                server.rpc("get_historical_session", token, include_jobs=True)

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            list(pool.map(calls, range(24)))
        assert server.proc is not None
        server.proc.send_signal(signal.SIGUSR2)
        native = json.loads(snapshots(server.data_dir / "tracemalloc", 1)[0].with_suffix(".json").read_text())
        return int(native["malloc_arenas"])
    finally:
        server.stop()


def test_the_server_keeps_to_two_malloc_arenas_unless_told_otherwise(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc would give each worker thread an arena of its own (up to 8 per core), each keeping its high-water
    mark (docs/performance.md, Malloc arenas); the server keeps to server.malloc_arena_max = 2."""
    monkeypatch.setenv("OWB_TRACEMALLOC", "1")
    assert arenas_after_load(tmp_path, "default", "") <= 2
    assert arenas_after_load(tmp_path, "glibc", "[server]\nmalloc_arena_max = 0\n") > 2  # glibc's own way
    monkeypatch.setenv("MALLOC_ARENA_MAX", "3")  # the operator's explicit choice wins over the setting
    assert arenas_after_load(tmp_path, "environment", "") == 3
