"""The POSIX account a job runs as (and the group it asks for)."""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd

from openworkbench.clusters.base import Account
from openworkbench.errors import InvalidParameter, LaunchFailed


def posix_account(username: str) -> Account:
    """The account a job of ``username`` runs as: that user when we are root, else ourselves."""
    try:
        entry = pwd.getpwnam(username) if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        raise LaunchFailed(f"user '{username}' has no POSIX account on this server") from None
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(groups), entry.pw_dir, entry.pw_shell)


def with_group(account: Account, group: str | None) -> Account:
    """The account with ``group`` (one of the user's groups) as the job's primary group."""
    if not group:
        return account
    try:
        gid = grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):
        raise InvalidParameter(f"job.group: no group '{group}' on this server") from None
    if gid not in account.groups and gid != account.gid:
        raise InvalidParameter(f"job.group: user '{account.username}' is not a member of group '{group}'")
    return dataclasses.replace(account, gid=gid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
