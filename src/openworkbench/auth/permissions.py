"""The permission policy: every "may this caller do that" question is answered here.

A token's kind sets what it can do beyond its owner's own resources; the owner's standing
(admin, super-admin) caps it, so demoting a user demotes their tokens at once.

=====================  ===========  ============  ==========================
kind                   read others  write others  act on behalf (username)
=====================  ===========  ============  ==========================
user                   no           no            no
admin-readonly         yes          no            no
admin                  yes          yes           no
super-admin-readonly   yes          no            no
super-admin            yes          yes           yes
=====================  ===========  ============  ==========================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from openworkbench.errors import PermissionDenied


class Action(enum.Enum):
    READ = "read"  # see a user's jobs, sessions, output, compute envs
    WRITE = "write"  # stop a user's jobs or sessions
    ACT_AS = "act_as"  # launch jobs or sessions as that user
    LIST_USERS = "list_users"  # get_users: admin read, even for oneself
    READ_ALL_USERS = "read_all_users"  # get_historical_session(include_all_users), the pages' Admin view: admin read
    MANAGE_USERS = "manage_users"  # disable or enable a user (admin write)


_READ_OTHERS = {"admin", "admin-readonly", "super-admin", "super-admin-readonly"}
_WRITE_OTHERS = {"admin", "super-admin"}
_ACT_AS = {"super-admin"}
_SUPER_KINDS = {"super-admin", "super-admin-readonly"}


@dataclass(frozen=True)
class Principal:
    """The caller of one request: a user and the kind of token they used."""

    user_id: int
    username: str
    kind: str
    # The session whose RPC cookie authenticated the call (None: a token or a sign-in): jobs it launches
    # get that session's cookie too (sessions/cookies.py).
    session_id: str | None = None

    @classmethod
    def from_standing(
        cls, user_id: int, username: str, kind: str, is_admin: bool, is_super_admin: bool
    ) -> Principal:
        """Cap the token's kind by the owner's current standing."""
        if kind in _SUPER_KINDS and not is_super_admin:
            kind = kind.removeprefix("super-") if is_admin else "user"
        if kind in _READ_OTHERS and not (is_admin or is_super_admin):
            kind = "user"
        return cls(user_id, username, kind)


def allowed(principal: Principal, action: Action, owner: str | None = None) -> bool:
    if action is Action.LIST_USERS or action is Action.READ_ALL_USERS:
        return principal.kind in _READ_OTHERS
    if action is Action.MANAGE_USERS:
        return principal.kind in _WRITE_OTHERS
    if owner is None or owner == principal.username:
        return True
    if action is Action.READ:
        return principal.kind in _READ_OTHERS
    if action is Action.WRITE:
        return principal.kind in _WRITE_OTHERS
    return principal.kind in _ACT_AS


def require(principal: Principal, action: Action, owner: str | None = None) -> None:
    if allowed(principal, action, owner):
        return
    needs = {
        Action.READ: "an admin or super-admin token with read access",
        Action.WRITE: "an admin or super-admin token with write access",
        Action.ACT_AS: "a super-admin token with write access",
        Action.LIST_USERS: "an admin or super-admin token with read access",
        Action.READ_ALL_USERS: "an admin or super-admin token with read access (include_all_users)",
        Action.MANAGE_USERS: "an admin or super-admin token with write access",
    }[action]
    target = f" for user '{owner}'" if owner and action in (Action.READ, Action.WRITE, Action.ACT_AS) else ""
    raise PermissionDenied(f"Permission denied: this needs {needs}{target}")
