"""The Local cluster: jobs run on this host, each under its own supervisor process.

The supervisor (``supervisor.py``, stdlib only) owns the job's process: it applies cgroup and
rlimit limits, drops to the job's user, waits for the exit and writes ``state.json``. The
launcher (``launcher.py``), a long-lived child of the server, forks it in its own session, so it
outlives the server and the launcher; the server finds it again through the job directory.
``lock`` is flock-ed by a live supervisor, which tells a running job from one whose supervisor
was lost.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from openworkbench.clusters.base import BAD_ROW_ERRORS, FINAL_STATUSES, Account, Cluster, JobRef, JobState
from openworkbench.clusters.local_spec import check_limits, describe_local, render_spec
from openworkbench.config import ClusterSettings, LocalSettings
from openworkbench.errors import ConfigError, LaunchFailed
from openworkbench.models import JobSpec

log = logging.getLogger(__name__)
LAUNCHER = Path(__file__).with_name("launcher.py")
LAUNCHER_TIMEOUT = 10.0  # seconds for one answer of the launcher; a fork takes about a millisecond
LOCK_CHECK_INTERVAL = 2.0  # seconds between liveness checks of one job's supervisor


class Launcher:
    """The server's end of ``launcher.py``: started at the first request, and again whenever it has died.

    One JSON line per request on its stdin, one per reply on its stdout; it exits at EOF of its stdin.
    """

    def __init__(self, python: str, jobs_dir: Path) -> None:
        self.python = python
        self.jobs_dir = jobs_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one request at a time: a reply answers the request just sent

    def start_supervisor(self, job_id: str) -> None:
        """Have a supervisor forked for the job, or make sure one runs; raise LaunchFailed otherwise."""
        request = json.dumps({"job": job_id}).encode() + b"\n"
        with self._lock:
            reply = self._ask(request)
            if reply is None:  # it died since the last request (or was killed): start a new one, once
                reply = self._ask(request)
        if reply is None:
            raise LaunchFailed(f"the job launcher exited without answering{self._log_tail()}")
        if "error" in reply:
            raise LaunchFailed(f"cannot start the job supervisor: {reply['error']}")

    def _ask(self, request: bytes) -> dict[str, Any] | None:
        """The launcher's reply; None if it has died."""
        proc = self._running()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            os.write(proc.stdin.fileno(), request)  # shorter than PIPE_BUF: written whole
            line = _read_line(proc.stdout.fileno(), LAUNCHER_TIMEOUT)
        except TimeoutError:
            self._discard()  # a launcher that hangs is of no use: the next request starts a new one
            raise LaunchFailed(f"the job launcher did not answer within {LAUNCHER_TIMEOUT:g} s") from None
        except OSError:  # BrokenPipeError: it has died
            line = b""
        if not line:
            self._discard()
            return None
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self._discard()
            raise LaunchFailed(f"the job launcher answered nonsense: {line[:200]!r}")
        return reply

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._discard()
        try:
            with open(self.jobs_dir / "launcher.log", "ab") as log:
                # -E -s: a root helper takes no module paths from the environment or the user's site.
                self._proc = subprocess.Popen(
                    [self.python, "-E", "-s", str(LAUNCHER), str(self.jobs_dir)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    bufsize=0,
                    start_new_session=True,  # terminal signals to the server must not reach it
                    close_fds=True,
                )
        except OSError as exc:
            raise LaunchFailed(f"cannot start the job launcher {self.python}: {exc}") from None
        return self._proc

    def _log_tail(self) -> str:
        try:
            lines = (self.jobs_dir / "launcher.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f": {lines[-1]}" if lines else ""

    def close(self) -> None:
        """Close its stdin, so it exits; the supervisors it forked keep running."""
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_line(fd: int, timeout: float) -> bytes:
    """One line from ``fd``; b"" at EOF. poll, not select: the server may hold fds above FD_SETSIZE."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        data += chunk
    return data


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
            _refuse_cgroup_keys(name, settings)
        self._launcher = Launcher(local.supervisor_python, jobs_dir)
        self._spawned: set[str] = set()  # jobs whose supervisor this server process started
        # job id -> (inode, mtime_ns, size) of the state.json last read. Not mtime alone: two writes within
        # one clock tick (a job that ends at once) share it.
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._lock_checked: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        return describe_local(self.name, self.settings, cgroups=self.cgroup_root is not None)

    def validate(self, spec: JobSpec) -> None:
        check_limits(self.name, self.settings, spec, cgroups=self.cgroup_root is not None)

    def submit(self, job_id: str, spec: JobSpec, account: Account) -> JobState:
        job_dir = self.jobs_dir / job_id
        self.jobs_dir.mkdir(mode=0o700, exist_ok=True)
        job_dir.mkdir(mode=0o700, exist_ok=True)
        rendered = render_spec(job_id, spec, account, job_dir, self.cgroup_root, self.settings)
        _write_json(job_dir / "spec.json", rendered)
        self._spawn(job_id)
        return JobState(
            status="Pending",
            host=self.host,
            stdout_file=rendered["stdout"],
            stderr_file=rendered["stderr"],
            cluster_state={"jobDir": str(job_dir)},
        )

    def _spawn(self, job_id: str) -> None:
        self._launcher.start_supervisor(job_id)
        self._spawned.add(job_id)

    def poll(self, jobs: list[JobRef]) -> dict[str, JobState]:
        updates: dict[str, JobState] = {}
        for job in jobs:
            try:
                state = self._poll_one(job)
            except BAD_ROW_ERRORS as exc:  # this job's data chokes us (a NaN limit of an older version): it alone
                log.exception("cluster %s: job %s cannot be followed", self.name, job.id)
                state = JobState(status="Failed", status_message=f"the job cannot be followed: {exc}")
            if state is None:
                continue
            if "jobDir" not in job.cluster_state and state.cluster_state is None:
                state = self._located(job.id, state)
            # Report changes only; a resubmission is a change too (it brings the output paths).
            if state.status != job.status or state.status in FINAL_STATUSES or state.stdout_file is not None:
                updates[job.id] = state
            if state.status in FINAL_STATUSES:
                self._forget(job.id)
        return updates

    def _located(self, job_id: str, state: JobState) -> JobState:
        """The state with where the job runs and writes. A server killed after it handed the job to the launcher
        but before it stored that leaves a row without them; the job directory still says."""
        job_dir = self.jobs_dir / job_id
        try:
            rendered = json.loads((job_dir / "spec.json").read_text())
        except (OSError, ValueError):
            return state  # resubmitted by this poll, or not written yet: the paths come with the submission
        return dataclasses.replace(state, host=self.host, stdout_file=rendered["stdout"],
                                   stderr_file=rendered["stderr"], cluster_state={"jobDir": str(job_dir)})

    def _poll_one(self, job: JobRef) -> JobState | None:
        job_dir = self.jobs_dir / job.id
        state = self._read_state(job.id, job_dir)
        if state is not None and state.status in FINAL_STATUSES:
            return state
        try:
            return self._check_supervisor(job, job_dir, state)
        except LaunchFailed as exc:  # restarting its supervisor failed: one job's failure, not the poll's
            return JobState(status="Failed", status_message=exc.message)

    def _check_supervisor(self, job: JobRef, job_dir: Path, state: JobState | None) -> JobState | None:
        """Is the job's supervisor still there? The launcher takes the lock before it replies, so a free
        lock means the supervisor has ended (or, for a job of an earlier server process, never started)."""
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
        if job.id in self._spawned:
            return _lost(job_dir, "the job supervisor ended without recording the job's exit status")
        if not (job_dir / "lock").exists() and job.account is not None:
            # Recorded as launched, but the server died before its launcher got to it: start it now.
            if not (job_dir / "spec.json").exists():
                return self.submit(job.id, job.spec, job.account)
            self._spawn(job.id)
            return JobState(status="Pending")
        return _lost(job_dir, "the job supervisor was lost; the job's exit status is unknown")

    def _read_state(self, job_id: str, job_dir: Path) -> JobState | None:
        path = job_dir / "state.json"
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self._seen.get(job_id) == version:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # replaced atomically, so this is a race with a rewrite: read it next time
        self._seen[job_id] = version
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
        self._spawned.discard(job_id)
        self._seen.pop(job_id, None)
        self._lock_checked.pop(job_id, None)

    def close(self) -> None:
        # Supervisors are meant to outlive the server: only the launcher goes.
        self._launcher.close()


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


def _refuse_cgroup_keys(name: str, settings: ClusterSettings) -> None:
    """Built-in pids and memory defaults apply only where cgroups work; one configured on purpose must not be
    silently dropped, as a configured memory default is not."""
    for key in ("max_pids", "default_memory_percent"):
        if key in settings.model_fields_set and getattr(settings, key):
            raise ConfigError(f"config key 'clusters.{name}.{key}': needs cgroups, which are not available")


def _cgroups_writable(root: str) -> bool:
    return all(os.access(os.path.join(root, ctl), os.W_OK) for ctl in ("memory", "cpu", "pids"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
