"""Which POSIX accounts jobs and sessions may run as: never root or a system account, unless the operator says so.

A super-admin token can launch for any user; without this rule it could run a job as uid 0 (``job.user`` =
``root``) or as ``daemon``, and have those registered as Workbench users. System accounts are uid 0 and the
uids below ``UID_MIN`` of ``/etc/login.defs`` (1000 where the file does not say), as ``useradd`` counts them.
"""

from __future__ import annotations

import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from openworkbench.errors import PermissionDenied

LOGIN_DEFS = Path("/etc/login.defs")
DEFAULT_UID_MIN = 1000


def uid_min_of(text: str) -> int:
    """``UID_MIN`` of a login.defs text: the last valid setting wins, as in shadow-utils; else 1000."""
    found = DEFAULT_UID_MIN
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "UID_MIN":
            try:
                value = int(words[1], 0)
            except ValueError:
                continue  # shadow-utils ignores an unreadable value too
            if value > 0:
                found = value
    return found


def read_uid_min(path: Path = LOGIN_DEFS) -> int:
    try:
        return uid_min_of(path.read_text(errors="replace"))
    except OSError:
        return DEFAULT_UID_MIN


@dataclass(frozen=True)
class RunAsPolicy:
    uid_min: int = DEFAULT_UID_MIN
    allowed: frozenset[str] = frozenset()

    @classmethod
    def load(cls, allowed: Iterable[str], path: Path = LOGIN_DEFS) -> RunAsPolicy:
        return cls(read_uid_min(path), frozenset(allowed))

    def check(self, username: str) -> None:
        """Refuse ``username`` if it names root or a system account not listed in ``auth.allowed_system_users``.

        A name without a POSIX account passes: the launch refuses it later ("has no POSIX account")."""
        if username in self.allowed:
            return
        try:
            uid = pwd.getpwnam(username).pw_uid
        except (KeyError, ValueError):  # ValueError: a NUL in the name; the parameter checks refuse it first
            return
        if uid == 0 or uid < self.uid_min:
            what = "root (uid 0)" if uid == 0 else f"a system account (uid {uid}, below UID_MIN {self.uid_min})"
            raise PermissionDenied(
                f"Permission denied: user '{username}' is {what}: jobs and sessions do not run as root or system "
                "accounts unless the server's auth.allowed_system_users lists them"
            )
