"""The supervisor's cgroup v1 work: create a job's groups, read its OOM counters, kill and remove what is left.

Stdlib-only, like supervisor.py, which imports it as a sibling module when the system Python runs it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

CPU_PERIOD_US = 100_000
CLEANUP_TIMEOUT_S = 5.0


def read_counter(path: str, key: str | None = None) -> int | None:
    """Read an integer cgroup file, or the ``key N`` line of one; None if absent/unreadable."""
    try:
        with open(path, encoding="ascii") as fh:
            if key is None:
                return int(fh.read())
            values = [line.split()[1] for line in fh if line.split()[:1] == [key]]
        return int(values[0]) if values else None
    except (OSError, ValueError, IndexError):
        return None


def read_oom_kills(path: str) -> int:
    """Return the ``oom_kill`` counter of a memory.oom_control file (0 if absent/unreadable)."""
    return read_counter(path, "oom_kill") or 0


def memory_oom_killed(mem_dir: str) -> bool:
    """Did the memory cgroup OOM-kill something? Prefer the exact counter (kernel >= 4.13)."""
    kills = read_counter(os.path.join(mem_dir, "memory.oom_control"), "oom_kill")
    if kills is not None:
        return kills > 0  # failcnt > 0 alone may just mean page cache was reclaimed at the limit
    memsw = os.path.join(mem_dir, "memory.memsw.failcnt")  # old kernels: was the limit hit?
    return (read_counter(memsw) or read_counter(os.path.join(mem_dir, "memory.failcnt")) or 0) > 0


def write_cg(cg_dir: str, name: str, value: int) -> None:
    with open(os.path.join(cg_dir, name), "w", encoding="ascii") as fh:
        fh.write(str(value))  # cgroupfs reports errors (EINVAL/EBUSY) on write/close


def remove_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


def configure_controller(path: str, controller: str, limits: dict[str, Any], notes: list[str]) -> None:
    remove_dir(path)  # a stale empty group from a crashed supervisor would carry old counters
    os.makedirs(path, exist_ok=True)
    if controller == "memory":
        limit = int(limits["memory_mb"] * 1024 * 1024)
        write_cg(path, "memory.limit_in_bytes", limit)  # first: memsw must stay >= limit
        if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
            write_cg(path, "memory.memsw.limit_in_bytes", limit)  # swap must not dodge the limit
        else:
            notes.append("swap accounting unavailable; memory limit does not cover swap")
    elif controller == "cpu":
        write_cg(path, "cpu.cfs_period_us", CPU_PERIOD_US)
        write_cg(path, "cpu.cfs_quota_us", max(1000, int(limits["cpu_count"] * CPU_PERIOD_US)))
    elif controller == "pids" and limits.get("pids_max"):
        write_cg(path, "pids.max", int(limits["pids_max"]))  # a fork bomb gets EAGAIN past it


def pids_note(groups: dict[str, str], limits: dict[str, Any]) -> str:
    """Say so when the job's pids.max refused forks (pids.events ``max``): its EAGAINs would be a riddle."""
    if "pids" not in groups or not limits.get("pids_max"):
        return ""
    refused = read_counter(os.path.join(groups["pids"], "pids.events"), "max") or 0
    if not refused:
        return ""
    return f"{refused} process creation(s) refused: the job reached its limit of {limits['pids_max']} processes"


def setup_cgroups(spec: dict[str, Any], groups: dict[str, str], notes: list[str]) -> None:
    """Create the job's cgroups into ``groups`` (controller -> directory); a failure becomes a note, never
    a job failure. ``groups`` is filled as we go, so a crash half-way still cleans up what exists."""
    root, name, limits = spec.get("cgroup_root"), spec.get("cgroup_name"), spec.get("limits") or {}
    if not root or not name:
        return
    wanted = ["pids"]  # always: lets us find and kill the job's leftovers
    wanted += [c for c, key in (("memory", "memory_mb"), ("cpu", "cpu_count")) if limits.get(key) is not None]
    for controller in wanted:
        base = os.path.join(root, controller)
        if not os.access(base, os.W_OK):
            notes.append(f"cgroup {base} not writable; {controller} cgroup skipped")
            continue
        path = os.path.join(base, name)
        try:
            configure_controller(path, controller, limits, notes)
            groups[controller] = path
        except OSError as exc:
            remove_dir(path)  # a half-configured group must not be used
            notes.append(f"could not set up {controller} cgroup: {exc}")


def live_pids(procs_file: str) -> set[int]:
    """Pids in a cgroup, ignoring zombies (PID 1 here reaps orphans slowly)."""
    pids: set[int] = set()
    live: set[int] = set()
    with contextlib.suppress(OSError), open(procs_file, encoding="ascii") as fh:
        pids = {int(line) for line in fh if line.strip()}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat", errors="replace") as fh:
            if fh.read().rpartition(")")[2].split()[0] not in ("Z", "X"):  # comm may contain ")"
                live.add(pid)
    return live


def _empty(groups: dict[str, str]) -> bool:
    """Whether the pids controller counts no task left: the usual case, told without listing cgroup.procs
    (in cgroup v1 each listing builds a pid list the kernel tears down later, ~1 ms of CPU per job)."""
    if "pids" not in groups:
        return False
    try:
        with open(os.path.join(groups["pids"], "pids.current"), encoding="ascii") as fh:
            return fh.read().strip() == "0"
    except (OSError, ValueError):
        return False


def cleanup_cgroups(groups: dict[str, str]) -> None:
    """SIGKILL whatever the job left behind in its cgroups, then remove the cgroup directories."""
    deadline = time.monotonic() + CLEANUP_TIMEOUT_S
    while time.monotonic() < deadline and not _empty(groups):
        pids = set().union(*(live_pids(os.path.join(d, "cgroup.procs")) for d in groups.values()))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for path in groups.values():
        remove_dir(path)
        # rmdir fails with EBUSY while unreaped zombies remain; retry until the deadline.
        while os.path.isdir(path) and time.monotonic() < deadline:
            time.sleep(0.05)
            remove_dir(path)
