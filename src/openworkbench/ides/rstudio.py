"""RStudio Server, open-source edition (``rserver``), run as the session's user in single-user mode.

Used only where an operator installed it (Debian does not package it; the default executable is
``/usr/lib/rstudio-server/bin/rserver``); elsewhere it reports ``available: false``. The flags are
those of rserver's own option table (src/cpp/server/server-options.json in rstudio/rstudio).

Two limits an operator must know:
- rserver cannot listen on a Unix socket: it listens on ``127.0.0.1:<port>``, and every local user
  can connect to a loopback port. With ``--auth-none=1`` nothing else stands in the way, and
  rserver has no option for a per-session secret header. On a multi-user host, put RStudio
  sessions where no other user runs (a cluster node per user, a container with its own network
  namespace) or filter the port with a netfilter owner match (``-m owner --uid-owner``).
- ``--www-root-path`` tells rserver the prefix a path-stripping proxy removed: rserver itself
  serves at "/", so ``strip_prefix`` is True, and it builds its redirects and cookies under the prefix.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from openworkbench.errors import InternalError
from openworkbench.ides.base import Activity, Ide, LaunchContext
from openworkbench.ides.client import IdeClient


class RStudio(Ide):
    name = "RStudio"
    lang = "R"
    project_id = "cfc78a31"
    strip_prefix = True
    supports_suspend = True
    ready_path = ""  # the IDE's main page; 200 once rserver serves
    uses_socket = False
    # `rstudio-server force-suspend-session <pid>` is `kill -USR2 <pid>`: rsession writes the R
    # session (global environment, history, open documents) to disk and exits; the next rsession
    # started for this data home resumes it, R objects included.
    self_suspend = ("rsession", int(signal.SIGUSR2))

    @staticmethod
    def data_home(ctx: LaunchContext) -> str:
        return os.path.join(ctx.state_dir, "rstudio")

    def flags(self, ctx: LaunchContext) -> list[str]:
        if ctx.port is None or not ctx.user:
            raise InternalError("RStudio needs a loopback port and the user name in its launch context")
        run = ctx.runtime_dir("rstudio")  # rserver's sockets to rsession: keep the path short
        return [
            "--server-daemonize=0",
            f"--server-user={ctx.user}",  # not root: rserver must run as the user it serves
            "--auth-none=1",
            "--www-address=127.0.0.1",
            f"--www-port={ctx.port}",
            f"--www-root-path={ctx.prefix}",
            "--www-verify-user-agent=0",  # our readiness probe is no browser
            f"--server-data-dir={run}",
            f"--server-pid-file={run}/rserver.pid",
            f"--server-working-dir={ctx.working_dir}",
            f"--secure-cookie-key-file={self.data_home(ctx)}/secure-cookie-key",
            f"--database-config-file={self.data_home(ctx)}/database.conf",
            f"--rsession-config-file={self.data_home(ctx)}/rsession.conf",
        ]

    def config_files(self, ctx: LaunchContext) -> dict[str, str]:
        home = self.data_home(ctx)
        return {
            # The default database is /var/lib/rstudio-server, which the user cannot write.
            f"{home}/database.conf": f"provider=sqlite\ndirectory={home}/db\n",
            # Idleness is the server's business (ides.RStudio.idle_timeout_minutes), not rsession's.
            f"{home}/rsession.conf": f"session-timeout-minutes=0\nsession-default-working-dir={ctx.working_dir}\n",
        }

    def transient_dirs(self, ctx: LaunchContext) -> list[str]:
        return [ctx.runtime_dir("rstudio")]

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        # rsession keeps its per-user state (and a suspended session) under RSTUDIO_DATA_HOME:
        # in the session's state dir, it survives suspend and stays apart from other sessions.
        return {"RSTUDIO_DATA_HOME": os.path.join(self.data_home(ctx), "data")}

    async def activity(self, client: IdeClient) -> Activity:
        """rserver has no activity API: the proxy's traffic is all there is to go by."""
        return Activity(executing=False, last_activity=None, connections=0)

    async def save_state(self, client: IdeClient, ctx: LaunchContext) -> dict[str, Any]:
        """Nothing to call over HTTP: rsession saves itself on ``self_suspend``'s signal."""
        return {"ide": self.name, "working_dir": ctx.working_dir, "data_home": self.data_home(ctx)}
