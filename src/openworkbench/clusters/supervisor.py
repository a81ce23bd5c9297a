#!/usr/bin/python3
"""Per-job supervisor: runs ONE job and records its exit status in JOB_DIR/state.json.

Forked by the launcher (launcher.py) into its own session, or run as ``/usr/bin/python3 supervisor.py JOB_DIR``;
either way detached, so the status survives the server dying.
Stdlib-only: it runs under Debian's Python because the project's interpreter is not readable by users.
JOB_DIR: spec.json (input), lock (flock held while alive; holds our pid), state.json (atomic writes), and
supervisor.log, created only when there is something to say.
"""

from __future__ import annotations

import _thread  # not threading: its at-fork hook and imports cost every forked supervisor page copies
import contextlib
import datetime
import fcntl
import json
import math
import os
import resource
import signal
import stat
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from openworkbench.clusters import supervisor_cgroups as cgroups
else:
    try:  # run by the system Python as a script (or forked by the launcher): its sibling is on sys.path
        import supervisor_cgroups as cgroups
    except ModuleNotFoundError:  # imported as a module of the package
        from openworkbench.clusters import supervisor_cgroups as cgroups

SIGNAL_NAMES = {s.value: s.name for s in signal.Signals}


@dataclass
class Job:
    """What the supervisor knows about the job; kept so a crash can still record a final state."""

    job_dir: str
    notes: list[str] = field(default_factory=list)
    pid: int | None = None
    reaped: bool = False
    start_time: str | None = None
    cgroups: dict[str, str] = field(default_factory=dict)  # controller -> cgroup directory


@dataclass
class ChildPlan:
    """Everything the forked child needs, computed before fork so the child stays minimal."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    groups: list[int]
    switch_user: bool
    procs_files: list[str]
    rlimit_cpu: tuple[int, int] | None
    ignored_signals: list[int]
    rlimit_fsize: tuple[int, int] | None = None


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json_atomic(path: str, data: dict[str, Any], sync: bool = False) -> None:
    # tmp + rename: readers never see a half-written file. ``sync`` (fsync) for the final state only: it is
    # the record that must survive a crash of the machine; the others are overwritten within the job's life.
    tmp = f"{path}.tmp.{os.getpid()}"
    text = json.dumps(data).encode()  # written at once, not one write per token as json.dump does
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    try:
        while text:
            text = text[os.write(fd, text) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def final_state(wait_status: int, rusage_cpu_s: float, limits: dict[str, Any], oom_killed: bool) -> dict[str, Any]:
    """Map a wait status to the final state fields: status, exitCode, statusMessage, signal."""
    memory_mb, cpu_s = limits.get("memory_mb"), limits.get("cpu_time_s")
    if os.WIFEXITED(wait_status):
        code = os.WEXITSTATUS(wait_status)
        # The OOM killer may have picked a child of the main process: say so, or the exit code is a riddle.
        note = ""
        if oom_killed and memory_mb:
            note = f"A process of the job was killed: exceeded the memory limit of {memory_mb:g} MB"
        return {"status": "Finished", "exitCode": code, "statusMessage": note, "signal": None}
    sig = os.WTERMSIG(wait_status)
    killed = {"status": "Killed", "exitCode": 128 + sig, "signal": sig}
    if sig == signal.SIGKILL and oom_killed and memory_mb is not None:
        return {**killed, "statusMessage": f"Killed: exceeded its memory limit of {memory_mb:g} MB"}
    # SIGXCPU only comes from RLIMIT_CPU in practice; SIGKILL is its hard limit (soft + 5 s).
    if cpu_s is not None and (sig == signal.SIGXCPU or (sig == signal.SIGKILL and rusage_cpu_s >= cpu_s)):
        return {**killed, "statusMessage": f"Killed: exceeded its CPU time limit of {cpu_s:g} s"}
    if sig == signal.SIGKILL:
        return {**killed, "statusMessage": "Killed by SIGKILL"}
    msg = file_size_message(sig, limits) or f"Terminated by {SIGNAL_NAMES.get(sig, f'signal {sig}')}"
    return {"status": "Finished", "exitCode": 128 + sig, "statusMessage": msg, "signal": sig}


def file_size_message(sig: int, limits: dict[str, Any]) -> str | None:
    """SIGXFSZ comes from RLIMIT_FSIZE: a write past the cluster's max_file_size_mb. Like any signal but SIGKILL,
    it ends the job Finished (128 + 25), as on Slurm; the message says which limit."""
    size_mb = limits.get("file_size_mb")
    if sig != signal.SIGXFSZ or not size_mb:
        return None
    return f"Terminated by SIGXFSZ: a file it wrote reached the file size limit of {size_mb:g} MB"


def exec_failure_message(argv0: str, cwd: str, report: str) -> str:
    """Turn the child's "stage:message" report into a user-facing statusMessage."""
    stage, _, message = report.partition(":")
    details = {"exec": message, "chdir": f"Could not change to working directory {cwd}: {message}"}
    return f"Could not start {argv0}: {details.get(stage, f'{stage} failed: {message}')}"


def take_lock(job_dir: str) -> int:
    # os.open fds are non-inheritable (PEP 446), so the job never holds the lock.
    fd = os.open(os.path.join(job_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def record_pid(lock_fd: int) -> None:
    # In the lock file, not a file of its own: every file created costs an inode allocation.
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, json.dumps({"supervisorPid": os.getpid()}).encode(), 0)


def log_line(job_dir: str, text: str) -> None:
    """Append to JOB_DIR/supervisor.log, which the server quotes when the supervisor is lost."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.join(job_dir, "supervisor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, text.rstrip("\n").encode(errors="replace") + b"\n")
        finally:
            os.close(fd)


def cpu_rlimit(limits: dict[str, Any]) -> tuple[int, int] | None:
    cpu_s = limits.get("cpu_time_s")
    if cpu_s is None:
        return None
    soft = max(1, math.ceil(cpu_s))
    cur_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    cap = soft + 5 if cur_hard == resource.RLIM_INFINITY else cur_hard  # unprivileged can't raise it
    return min(soft, cap), min(soft + 5, cap)


def fsize_rlimit(limits: dict[str, Any]) -> tuple[int, int] | None:
    size_mb = limits.get("file_size_mb")
    if not size_mb:
        return None
    cur_hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    size = int(size_mb) * 1024 * 1024
    limit = size if cur_hard == resource.RLIM_INFINITY else min(size, cur_hard)  # unprivileged can't raise it
    return limit, limit  # hard too: the job may not raise it


def prepare(job: Job, spec: dict[str, Any]) -> ChildPlan:
    """Validate the spec and set up cgroups; raise ValueError for specs we cannot honour."""
    if not spec.get("argv"):
        raise ValueError("empty argv")
    euid = os.geteuid()
    if euid != 0 and spec["uid"] != euid:
        raise ValueError(f"cannot run as uid {spec['uid']}: supervisor is not root")
    cgroups.setup_cgroups(spec, job.cgroups, job.notes)
    argv, env = [str(a) for a in spec["argv"]], {str(k): str(v) for k, v in spec["env"].items()}
    procs_files = [os.path.join(d, "cgroup.procs") for d in job.cgroups.values()]
    groups, rlimit = list(spec.get("groups") or [spec["gid"]]), cpu_rlimit(spec.get("limits") or {})
    switch_user = euid == 0 and spec["uid"] != 0  # unprivileged: spec uid is already our own
    return ChildPlan(
        argv, env, spec["cwd"], spec["uid"], spec["gid"], groups, switch_user, procs_files, rlimit, ignored_signals(),
        rlimit_fsize=fsize_rlimit(spec.get("limits") or {}),
    )


def open_output(path: str, plan: ChildPlan) -> int:
    # A new inode for every run: a hard link the user made to an earlier run's output (through
    # /proc/<pid>/fd) stays attached to that one, sealed, and never becomes this run's output.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    if plan.switch_user:
        os.fchown(fd, plan.uid, plan.gid)
    return fd


def seal_outputs(spec: dict[str, Any]) -> None:
    """Once the job has ended: its output becomes root's, read-only (0440, the user's group may read). The
    job wrote it as its user, so the user could have hard-linked it; from now on no link or new open can
    change what the server serves as this job's output."""
    for path in {spec["stdout"], spec["stderr"]}:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    if os.geteuid() == 0:
                        os.fchown(fd, 0, spec["gid"])
                    os.fchmod(fd, 0o440)
            finally:
                os.close(fd)


def feed_stdin(write_fd: int, data: bytes) -> None:
    # Runs in a thread so a job that never reads stdin cannot block the supervisor.
    with contextlib.suppress(OSError), open(write_fd, "wb", buffering=0) as fh:
        fh.write(data)  # EPIPE if the job exits early: nothing to do


def ignored_signals() -> list[int]:
    # Python ignores SIGPIPE/SIGXFSZ and we ignore SIGTERM/INT/HUP. Only ignored dispositions survive exec
    # (handled ones are reset by it), so only these need resetting; found before fork, so the child does less.
    return [sig for sig in signal.valid_signals() if signal.getsignal(sig) == signal.SIG_IGN]


def reset_signals(ignored: list[int]) -> None:
    for sig in ignored:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def child_main(plan: ChildPlan, fds: tuple[int, int, int], err_fd: int) -> NoReturn:
    """Runs in the forked child: set up the process, then exec. Never returns."""
    stage = "setpgid"
    try:
        os.setpgid(0, 0)  # own process group (pgid == pid) so the server can signal the whole job
        stage = "cgroup"
        for procs in plan.procs_files:
            fd = os.open(procs, os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        stage = "setrlimit"
        if plan.rlimit_cpu is not None:
            resource.setrlimit(resource.RLIMIT_CPU, plan.rlimit_cpu)
        if plan.rlimit_fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, plan.rlimit_fsize)
        stage = "dup2"
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        stage = "setuid"
        if plan.switch_user:  # groups and gid first: after setuid we may no longer change them
            os.setgroups(plan.groups)
            os.setgid(plan.gid)
            os.setuid(plan.uid)
        stage = "chdir"
        os.chdir(plan.cwd)  # after setuid so directory permissions are checked as the user
        stage = "signals"
        reset_signals(plan.ignored_signals)
        stage = "exec"
        os.execvpe(plan.argv[0], plan.argv, plan.env)
    except BaseException as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        with contextlib.suppress(BaseException):
            os.write(err_fd, f"{stage}:{message}".encode(errors="replace"))
    os._exit(127)


def start_child(job: Job, spec: dict[str, Any]) -> str | None:
    """Fork and exec the job; return None on success or the child's "stage:message" report."""
    plan = prepare(job, spec)
    out_fd = open_output(spec["stdout"], plan)
    err_out_fd = out_fd if spec["stderr"] == spec["stdout"] else open_output(spec["stderr"], plan)
    stdin_data = (spec.get("stdin") or "").encode()
    in_fd, in_write = os.pipe() if stdin_data else (os.open(os.devnull, os.O_RDONLY), None)
    err_r, err_w = os.pipe()  # CLOEXEC: EOF without data means exec succeeded
    pid = os.fork()
    if pid == 0:
        child_main(plan, (in_fd, out_fd, err_out_fd), err_w)
    job.pid = pid
    for fd in {in_fd, out_fd, err_out_fd, err_w}:
        os.close(fd)
    if in_write is not None:
        _thread.start_new_thread(feed_stdin, (in_write, stdin_data))  # never joined, like a daemon thread
    with open(err_r, "rb") as fh:
        report = fh.read()
    return report.decode(errors="replace") if report else None


def kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)  # ESRCH: nothing left


def wait_child(pid: int) -> tuple[int, resource.struct_rusage]:
    # Observe the exit without reaping, so the pid (== pgid) cannot be reused while we kill leftovers.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # PEP 475: EINTR is retried
    kill_group(pid)
    _, status, rusage = os.wait4(pid, 0)
    return status, rusage


def base_state(job: Job) -> dict[str, Any]:
    return {"pid": job.pid, "pgid": job.pid, "startTime": job.start_time, "notes": job.notes}


def finish(job: Job, spec: dict[str, Any]) -> dict[str, Any]:
    status, rusage = wait_child(job.pid or 0)
    job.reaped = True
    cpu_s = rusage.ru_utime + rusage.ru_stime
    mem_dir = job.cgroups.get("memory")
    oom = cgroups.memory_oom_killed(mem_dir) if mem_dir else False  # read before cleanup removes the cgroup
    state = base_state(job)
    state.update(final_state(status, cpu_s, spec.get("limits") or {}, oom))
    if note := cgroups.pids_note(job.cgroups, spec.get("limits") or {}):  # read before cleanup removes the cgroup
        state["statusMessage"] = "; ".join(filter(None, [state["statusMessage"], note]))
    state.update({"endTime": now_iso(), "maxRssKb": rusage.ru_maxrss, "cpuTimeS": round(cpu_s, 3)})
    return state


def failed_state(job: Job, message: str) -> dict[str, Any]:
    return {**base_state(job), "status": "Failed", "statusMessage": message, "exitCode": None, "endTime": now_iso()}


def supervise(job: Job) -> None:
    with open(os.path.join(job.job_dir, "spec.json"), encoding="utf-8") as fh:
        spec: dict[str, Any] = json.load(fh)
    state_path = os.path.join(job.job_dir, "state.json")
    if os.path.exists(os.path.join(job.job_dir, "cancel")):
        # stop_job reached a job still Pending: the server waits for this state or for Running.
        canceled = {**failed_state(job, "Canceled before it started"), "status": "Canceled"}
        write_json_atomic(state_path, canceled, sync=True)
        return
    report = start_child(job, spec)
    if report is not None:
        os.waitpid(job.pid or 0, 0)  # the child already _exit()ed after reporting
        job.reaped = True
        message = exec_failure_message(spec["argv"][0], spec["cwd"], report)
        seal_outputs(spec)
        write_json_atomic(state_path, {**failed_state(job, message), "pid": None, "pgid": None}, sync=True)
        return
    job.start_time = now_iso()
    write_json_atomic(state_path, {**base_state(job), "status": "Running"})
    state = finish(job, spec)
    # Its leftovers (a daemon holding the output open) are killed before the output is sealed and the end
    # reported, so no process of the job can write to "finished" output.
    cgroups.cleanup_cgroups(job.cgroups)
    job.cgroups.clear()
    seal_outputs(spec)
    write_json_atomic(state_path, state, sync=True)


def handle_crash(job: Job, exc: BaseException) -> None:
    """Last resort: never leave the job without a final state."""
    log_line(job.job_dir, f"supervisor error: {exc!r}")
    if job.pid is not None and not job.reaped:
        kill_group(job.pid)  # we can no longer track it; don't leave an unsupervised job running
        with contextlib.suppress(OSError):
            os.waitpid(job.pid, 0)
    message = f"Supervisor error: {type(exc).__name__}: {exc}"
    try:
        write_json_atomic(os.path.join(job.job_dir, "state.json"), failed_state(job, message), sync=True)
    except BaseException as exc2:
        log_line(job.job_dir, f"could not write final state: {exc2!r}")


def run(job_dir: str, lock_fd: int | None = None) -> int:
    """Supervise the job of ``job_dir`` to its end. ``lock_fd``: its lock, already taken by the launcher."""
    # The server signals the job's process group, never us; a stray signal must not lose the status.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    job = Job(job_dir=os.path.abspath(job_dir))
    if lock_fd is None:
        lock_fd = take_lock(job.job_dir)
    try:
        record_pid(lock_fd)
        supervise(job)
    except BaseException as exc:
        handle_crash(job, exc)
    finally:
        cgroups.cleanup_cgroups(job.cgroups)
    os.close(lock_fd)
    return 0


def main(argv: list[str]) -> int | str:
    if len(argv) != 2:
        return "usage: supervisor.py JOB_DIR"
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # stray fds from the server must not reach the job
    return run(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
