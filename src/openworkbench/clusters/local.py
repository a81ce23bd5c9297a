"""The Local cluster: jobs run on this host, each under its own supervisor process.

The supervisor (``supervisor.py``, stdlib only) owns the job's process: it applies cgroup and
rlimit limits, drops to the job's user, waits for the exit and writes ``state.json``. It is
started in its own session, so it outlives the server; the server finds it again through the
job directory. ``lock`` is flock-ed by a live supervisor, which tells a running job from one
whose supervisor was lost.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from openworkbench.clusters.base import FINAL_STATUSES, Account, Cluster, JobRef, JobState
from openworkbench.clusters.local_spec import check_limits, describe_local, render_spec
from openworkbench.config import ClusterSettings, LocalSettings
from openworkbench.errors import ConfigError, LaunchFailed
from openworkbench.models import JobSpec

SUPERVISOR = Path(__file__).with_name("supervisor.py")
LOCK_CHECK_INTERVAL = 2.0  # seconds between liveness checks of one job's supervisor


class LocalCluster(Cluster):
    type = "Local"

    def __init__(self, name: str, settings: ClusterSettings, local: LocalSettings, jobs_dir: Path) -> None:
        super().__init__(name, settings)
        self.local = local
        self.jobs_dir = jobs_dir
        self.host = socket.gethostname()
        self.cgroup_root = (
            local.cgroup_root if local.cgroups and _cgroups_writable(local.cgroup_root) else None
        )
        if self.cgroup_root is None:
            for kind in ("memory", "cpuCount"):
                if (conf := settings.limits.get(kind)) and conf.default is not None:
                    raise ConfigError(
                        f"config key 'clusters.{name}.limits.{kind}.default': needs cgroups, which are not available"
                    )
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._seen: dict[str, int] = {}  # job id -> mtime_ns of the state.json last read
        self._lock_checked: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        return describe_local(self.name, self.settings)

    def validate(self, spec: JobSpec) -> None:
        check_limits(self.name, self.settings, spec, cgroups=self.cgroup_root is not None)

    def submit(self, job_id: str, spec: JobSpec, account: Account) -> JobState:
        job_dir = self.jobs_dir / job_id
        self.jobs_dir.mkdir(mode=0o700, exist_ok=True)
        job_dir.mkdir(mode=0o700, exist_ok=True)
        rendered = render_spec(job_id, spec, account, job_dir, self.cgroup_root, self.settings)
        _write_json(job_dir / "spec.json", rendered)
        self._spawn(job_id, job_dir)
        return JobState(
            status="Pending",
            host=self.host,
            stdout_file=rendered["stdout"],
            stderr_file=rendered["stderr"],
            cluster_state={"jobDir": str(job_dir)},
        )

    def _spawn(self, job_id: str, job_dir: Path) -> None:
        try:
            with open(job_dir / "supervisor.log", "ab") as log:
                self._children[job_id] = subprocess.Popen(
                    [self.local.supervisor_python, str(SUPERVISOR), str(job_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise LaunchFailed(
                f"cannot start the job supervisor {self.local.supervisor_python}: {exc}"
            ) from None

    def poll(self, jobs: list[JobRef]) -> dict[str, JobState]:
        updates: dict[str, JobState] = {}
        for job in jobs:
            state = self._poll_one(job)
            if state is None:
                continue
            # Report changes only; a resubmission is a change too (it brings the output paths).
            if state.status != job.status or state.status in FINAL_STATUSES or state.stdout_file is not None:
                updates[job.id] = state
            if state.status in FINAL_STATUSES:
                self._forget(job.id)
        return updates

    def _poll_one(self, job: JobRef) -> JobState | None:
        job_dir = self.jobs_dir / job.id
        state = self._read_state(job.id, job_dir)
        if state is not None and state.status in FINAL_STATUSES:
            return state
        child = self._children.get(job.id)
        if child is not None:
            code = child.poll()
            if code is None or state is not None:
                return state
            return _lost(job_dir, f"the job supervisor exited with code {code}")
        return self._check_adopted(job, job_dir, state)

    def _check_adopted(self, job: JobRef, job_dir: Path, state: JobState | None) -> JobState | None:
        """A job started by an earlier server process: is its supervisor still there?"""
        now = time.monotonic()
        if now - self._lock_checked.get(job.id, 0.0) < LOCK_CHECK_INTERVAL:
            return state
        self._lock_checked[job.id] = now
        if _lock_held(job_dir / "lock"):
            return state
        self._seen.pop(job.id, None)
        final = self._read_state(job.id, job_dir)  # it may have ended between the two reads
        if final is not None and final.status in FINAL_STATUSES:
            return final
        if not (job_dir / "supervisor.json").exists() and job.account is not None:
            # Recorded as launched, but the server died before the supervisor started: start it now.
            if not (job_dir / "spec.json").exists():
                return self.submit(job.id, job.spec, job.account)
            self._spawn(job.id, job_dir)
            return JobState(status="Pending")
        return _lost(job_dir, "the job supervisor was lost; the job's exit status is unknown")

    def _read_state(self, job_id: str, job_dir: Path) -> JobState | None:
        path = job_dir / "state.json"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if self._seen.get(job_id) == mtime:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # replaced atomically, so this is a race with a rewrite: read it next time
        self._seen[job_id] = mtime
        return JobState(
            status=data["status"],
            status_message=data.get("statusMessage") or "",
            exit_code=data.get("exitCode"),
            pid=data.get("pid"),
        )

    def stop(self, job: JobRef, force: bool) -> JobState | None:
        job_dir = self.jobs_dir / job.id
        sig = signal.SIGKILL if force else signal.SIGTERM
        pgid = _running_pgid(job_dir)
        if pgid is None:
            # Not started yet: the supervisor checks for this file before it forks the job.
            (job_dir / "cancel").write_text(sig.name)
            deadline = time.monotonic() + 2.0
            while pgid is None and time.monotonic() < deadline and not (job_dir / "state.json").exists():
                time.sleep(0.01)
            pgid = _running_pgid(job_dir)
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass  # it ended on its own meanwhile
        return None

    def _forget(self, job_id: str) -> None:
        child = self._children.pop(job_id, None)
        if child is not None:
            try:
                child.wait(timeout=5)  # the supervisor exits right after writing the final state
            except subprocess.TimeoutExpired:
                pass
        self._seen.pop(job_id, None)
        self._lock_checked.pop(job_id, None)

    def close(self) -> None:
        # Supervisors are meant to outlive the server: only drop our handles.
        self._children.clear()


def _running_pgid(job_dir: Path) -> int | None:
    try:
        data = json.loads((job_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if data.get("status") != "Running":
        return None
    pgid = data.get("pgid") or data.get("pid")
    return int(pgid) if pgid else None


def _lost(job_dir: Path, reason: str) -> JobState:
    try:
        tail = (job_dir / "supervisor.log").read_text(errors="replace").strip().splitlines()[-1:]
    except OSError:
        tail = []
    return JobState(status="Failed", status_message=": ".join([reason, *tail]))


def _lock_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


def _cgroups_writable(root: str) -> bool:
    return all(os.access(os.path.join(root, ctl), os.W_OK) for ctl in ("memory", "cpu", "pids"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
