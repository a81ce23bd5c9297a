"""A session's RPC cookie where its code finds it: the environment and ``$PWB_SESSION_RUNTIME_DIR/rpc_cookie``.

The cookie (auth/tokens.py) is valid until its expiry and only while its session lives. The IDE's
environment holds the one of its start; the file is rewritten with a fresh one once less than half of
``sessions.rpc_cookie_lifetime_s`` remains, so a client that re-reads the file (posit-sdk does when its copy
expires) keeps working for as long as the session lives. Jobs launched with a session's cookie get the same
variables and a fresh cookie of that session (``job_environment``), so jobs that launch jobs work too.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from openworkbench.auth.tokens import rpc_cookie
from openworkbench.clusters.base import Account
from openworkbench.config import Settings
from openworkbench.errors import LaunchFailed
from openworkbench.ides import LaunchContext
from openworkbench.sessions import files
from openworkbench.store.schema import utcnow

COOKIE_VARIABLE = "RS_SESSION_RPC_COOKIE"
COOKIE_FILE = "rpc_cookie"
# Written as the session's user: 0700 directory, 0600 file, replaced atomically (a reader never sees half).
_WRITE = ('umask 077 && mkdir -p -- "$1" && cat > "$1/.rpc_cookie.tmp" && '
          'mv -f -- "$1/.rpc_cookie.tmp" "$1/rpc_cookie"')


class SessionCookies:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lifetime = timedelta(seconds=settings.sessions.rpc_cookie_lifetime_s)
        self.expiry: dict[str, datetime] = {}  # session id -> expiry of the cookie last written to its file

    def mint(self, session_id: str, secret: str) -> tuple[str, datetime]:
        expires = utcnow() + self.lifetime
        return rpc_cookie(session_id, secret, expires), expires

    @staticmethod
    def runtime_dir(ctx: LaunchContext) -> str:
        """The session's own runtime directory: beside its socket (tmpfs, the user's 0700 directory), or on a
        cluster node in its state directory (the home is what the node and the server share)."""
        return os.path.join(ctx.state_dir, "pwb-runtime") if ctx.network else ctx.runtime_dir("pwb")

    def environment(self, cookie: str, runtime_dir: str) -> dict[str, str]:
        """What every session, and every job launched with its cookie, gets (the product's names)."""
        return {
            COOKIE_VARIABLE: cookie,
            "PWB_SESSION_RUNTIME_DIR": runtime_dir,
            "RS_SERVER_ADDRESS": self.settings.server.session_address(),
            "POSIT_PRODUCT": "WORKBENCH",
        }

    def write(self, account: Account, ctx: LaunchContext, secret: str) -> str:
        """A fresh cookie in the session's ``rpc_cookie`` file (as its user); returns it."""
        cookie, expires = self.mint(ctx.session_id, secret)
        directory = self.runtime_dir(ctx)
        result = files.run_as(account, ["/bin/sh", "-c", _WRITE, "sh", directory], cookie + "\n")
        if result.returncode != 0:
            raise LaunchFailed(f"cannot write the session's RPC cookie in {directory}: {result.stderr.strip()}")
        self.expiry[ctx.session_id] = expires
        return cookie

    def due(self, session_id: str) -> bool:
        """Whether the file's cookie should be renewed now (unknown after a restart: yes)."""
        expires = self.expiry.get(session_id)
        return expires is None or expires - utcnow() < self.lifetime / 2

    def forget(self, session_id: str) -> None:
        self.expiry.pop(session_id, None)
