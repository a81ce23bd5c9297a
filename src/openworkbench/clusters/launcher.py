#!/usr/bin/python3
"""The job launcher: one long-lived process that forks a supervisor for each Local job.

The server starts it (``/usr/bin/python3 launcher.py JOBS_DIR``) and talks to it over its stdin and stdout:
one JSON line per request, ``{"job": "<job id>"}``, and one JSON line per reply: ``{"started": true}`` (the
job's lock is taken; its supervisor is forked right after the reply, so the server does not wait for the fork),
``{"running": true}`` (a supervisor of that job already holds its lock) or ``{"error": "..."}``.
It exits at EOF of its stdin, that is when the server exits; the supervisors it forked keep running.

Why a launcher: executing a new Python per job costs ~30 ms (interpreter start and imports); a fork of an
interpreter that has imported the supervisor already costs well under one.
Stdlib-only, like supervisor.py: it runs under the system Python and imports nothing else of the project.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import json
import os
import re
import signal
import stat
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any, NoReturn, cast

JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a name, never a path: no "/", no ".."
MAX_REQUEST = 4096
EXIT_SUPERVISOR_FAILED = 70

Supervise = Callable[[str, int], int]  # supervisor.run(job_dir, lock_fd) -> exit code


class Refused(Exception):
    """A request the launcher does not carry out; the message is the reply."""


class Launcher:
    def __init__(self, jobs_dir: str, supervise: Supervise) -> None:
        self.jobs_dir = jobs_dir
        self.supervise = supervise
        self.children: dict[int, str] = {}  # pid -> job dir, of the supervisors not reaped yet

    def handle(self, line: bytes) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """The reply to a request, and what to do once it is sent (fork the supervisor), if anything."""
        try:
            job_dir = self.job_dir(line)
            lock_fd = self.lock(job_dir)
        except Refused as exc:
            return {"error": str(exc)}, None
        except OSError as exc:
            return {"error": f"cannot start the supervisor: {exc}"}, None
        if lock_fd is None:
            return {"running": True}, None
        return {"started": True}, lambda: self.fork(job_dir, lock_fd)

    def job_dir(self, line: bytes) -> str:
        """The job directory a request names; it must be one of the server's, directly under JOBS_DIR."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            raise Refused("the request is not JSON") from None
        job_id = request.get("job") if isinstance(request, dict) else None
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            raise Refused('a request is {"job": "<job id>"}, a job id being letters, digits, "-" or "_"')
        path = os.path.join(self.jobs_dir, job_id)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise Refused(f"no job directory {path}") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise Refused(f"{path} is not a directory of the server's user")
        return path

    def lock(self, job_dir: str) -> int | None:
        """Take the job's lock, or None if a supervisor already holds it.

        It is taken before the reply, and the forked supervisor inherits it: from the reply on the server sees
        a live supervisor, and a second request for the same job cannot start it twice."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        lock_fd = os.open(os.path.join(job_dir, "lock"), flags, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            return None
        except OSError:
            os.close(lock_fd)
            raise
        return lock_fd

    def fork(self, job_dir: str, lock_fd: int) -> None:
        """Fork the job's supervisor, after the reply: the server need not wait for the fork. If it fails,
        the lock goes with our copy, and the server finds the job without a supervisor and says why."""
        # SIGCHLD waits until the pid is recorded, so reap() always knows whose supervisor ended.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        try:
            pid = os.fork()
            if pid == 0:
                become_supervisor(job_dir, lock_fd, self.supervise)
            self.children[pid] = job_dir
        except OSError as exc:
            log_line(job_dir, f"cannot fork the supervisor: {exc}")
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
            os.close(lock_fd)  # the child's copy holds the lock now

    def reap(self, *_: object) -> None:
        """SIGCHLD: reap ended supervisors (no zombies); note an abnormal end in the job's supervisor.log."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job_dir = self.children.pop(pid, None)
            if job_dir is not None and status != 0:
                note_exit(job_dir, status)


def note_exit(job_dir: str, status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        how = f"killed by {signal.Signals(sig).name if sig in set(signal.Signals) else f'signal {sig}'}"
    else:
        how = f"exited with code {os.waitstatus_to_exitcode(status)}"
    log_line(job_dir, f"supervisor {how}")


def log_line(job_dir: str, text: str) -> None:
    """Append to the job's supervisor.log, which the server quotes when it finds the supervisor lost."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
    with contextlib.suppress(OSError):
        fd = os.open(os.path.join(job_dir, "supervisor.log"), flags, 0o600)
        try:
            os.write(fd, text.rstrip("\n").encode(errors="replace") + b"\n")
        finally:
            os.close(fd)


def become_supervisor(job_dir: str, lock_fd: int, supervise: Supervise) -> NoReturn:
    """In the forked child: detach from the server and the launcher, then supervise the job. Never returns."""
    code = EXIT_SUPERVISOR_FAILED
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the supervisor reaps its job itself
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.setsid()  # own session: the job survives the server, the launcher and their terminal
        # Nothing of the launcher's may reach the job, above all not the server's control pipe (fds 0 and 1).
        # fd 2 stays the launcher's log, for what only the interpreter itself would print.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.closerange(3, lock_fd)
        os.closerange(lock_fd + 1, os.sysconf("SC_OPEN_MAX"))
        code = supervise(job_dir, lock_fd)
    except BaseException:
        with contextlib.suppress(BaseException):
            log_line(job_dir, traceback.format_exc())
    os._exit(code)


def serve(launcher: Launcher, requests: IO[bytes], reply_fd: int) -> None:
    """Answer requests one by one until EOF, which means the server has gone."""
    while line := requests.readline(MAX_REQUEST + 1):
        then: Callable[[], None] | None = None
        if line.endswith(b"\n"):
            reply, then = launcher.handle(line)
        else:
            while line and not line.endswith(b"\n"):  # drop the rest, so the next reply answers the next line
                line = requests.readline(MAX_REQUEST + 1)
            reply = {"error": f"a request is one line of at most {MAX_REQUEST} bytes"}
        data = (json.dumps(reply) + "\n").encode()
        try:
            while data:
                data = data[os.write(reply_fd, data) :]
        except BrokenPipeError:
            return
        finally:
            if then is not None:
                then()


def check_jobs_dir(path: str) -> str | None:
    """Why JOBS_DIR is not safe to launch from, or None: it must be ours, and writable by no one else."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"launcher: cannot use {path}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        return f"launcher: {path} must be a directory of uid {os.geteuid()}, writable by no one else"
    return None


def load_supervisor() -> Supervise:
    """Import supervisor.py, our sibling, once: every forked child starts with it loaded."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path[:1] != [here]:
        sys.path.insert(0, here)  # python -P or -I leave the script's directory out
    module = importlib.import_module("supervisor")
    return cast(Supervise, module.run)


def main(argv: list[str]) -> int | str:
    if len(argv) != 2:
        return "usage: launcher.py JOBS_DIR"
    jobs_dir = os.path.abspath(argv[1])
    problem = check_jobs_dir(jobs_dir)
    if problem is not None:
        return problem
    launcher = Launcher(jobs_dir, load_supervisor())
    gc.freeze()  # the children's collections then leave the launcher's objects alone: fewer copied pages
    signal.signal(signal.SIGCHLD, launcher.reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ends at EOF, whatever the server's terminal does
    serve(launcher, sys.stdin.buffer, sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
