"""The job's directory in the shared output directory, and the files the server writes and reads there.

Layout of ``<output_dir>/<job id>/`` (mode 0711, owned by the server, so the job's user cannot swap
a file for a symlink that the server, as root, would then read):

| file | owner | content |
|---|---|---|
| ``job.sh`` | user, 0600 | the batch script (sbatch reads it as the user) |
| ``env`` | user, 0600 | ``--export-file``; removed once sbatch has read it |
| ``stdin`` | user, 0600 | the job's standard input, if it has one |
| ``stdout``, ``stderr`` | user, 0600 | the job's output (made empty here); root's, 0440, once the job has ended |
| ``status/`` | user, 0700 | where the wrapper writes ``exit`` (it needs a writable directory to rename into) |
| ``slurm_job_id`` | server | Slurm's job id, written as soon as sbatch answers |
| ``force_quit`` | server, empty | made by a ``force_quit`` before its signal: the wrapper does not start a marked job |
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass

from openworkbench.clusters.base import Account
from openworkbench.clusters.slurm.parse import ExitRecord, parse_exit_file
from openworkbench.safefs import paths

MAX_EXIT_FILE = 4096


@dataclass(frozen=True)
class Owner:
    """Who owns the user's files: the account when the server is root, else nobody changes."""

    uid: int | None
    gid: int | None

    @classmethod
    def of(cls, account: Account) -> Owner:
        return cls(account.uid, account.gid) if os.geteuid() == 0 else cls(None, None)

    def chown(self, fd: int) -> None:
        if self.uid is not None and self.gid is not None:
            os.fchown(fd, self.uid, self.gid)


def write_private(path: str, data: bytes, owner: Owner) -> None:
    """Write ``path`` (0600, the owner's) through a fresh name and a rename: nothing there is ever followed."""
    tmp = f"{path}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        owner.chown(fd)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_job_dir(output_dir: str, job_dir: str, owner: Owner) -> None:
    """The job's directory (the server's, 0711) and its ``status/`` (the user's); raises FileSystemError."""
    if not os.path.isdir(output_dir):
        os.makedirs(output_dir, mode=0o711, exist_ok=True)  # traversable, not listable: job ids stay private
    paths.ensure_dir(job_dir, output_dir, 0o711)
    paths.ensure_dir(os.path.join(job_dir, "status"), output_dir, 0o700, owner.uid, owner.gid)


def remove(path: str, output_dir: str) -> None:
    paths.remove_file(path, output_dir)


def seal_outputs(output_dir: str, outputs: tuple[str, str], account: Account | None) -> None:
    """A job that has ended: its output files become root's and read-only where the server can (not on a
    root-squashed NFS export), so a hard link the user made cannot rewrite finished output."""
    if account is None or os.geteuid() != 0:
        return
    for path in set(outputs):
        paths.seal_file(path, output_dir, account.uid, account.gid)


def read_exit(job_dir: str) -> ExitRecord | None:
    """The wrapper's record, if it wrote one; the file is the user's, so open it warily."""
    try:
        fd = os.open(os.path.join(job_dir, "status", "exit"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return parse_exit_file(os.read(fd, MAX_EXIT_FILE).decode(errors="replace"))
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except (OSError, ValueError):
        return ""
