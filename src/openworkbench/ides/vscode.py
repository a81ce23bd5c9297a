"""VS Code, served by code-server (npm package ``code-server``, 4.100.3 here).

code-server has no base-path option, but every link it emits is relative, so the proxy strips the
session prefix. It has no token option either: with ``--auth none`` it relies on the socket's
0700 directory, which only the session's user and the server can enter.
"""

from __future__ import annotations

import os
from typing import Any

from openworkbench.ides.base import Activity, Ide, LaunchContext, from_epoch_ms
from openworkbench.ides.client import IdeClient


class VSCode(Ide):
    name = "VS Code"
    lang = "code-server"
    project_id = "3c9ab5a7"
    strip_prefix = True
    supports_suspend = True
    ready_path = "healthz"

    @staticmethod
    def user_data_dir(ctx: LaunchContext) -> str:
        return os.path.join(ctx.state_dir, "user-data")

    def flags(self, ctx: LaunchContext) -> list[str]:
        return [
            "--auth", "none",
            "--socket", ctx.socket_path,
            "--socket-mode", "600",
            # Everything code-server keeps lives in the session's state dir, so it survives suspend:
            # settings, window and editor state, the last opened folder, installed extensions.
            "--user-data-dir", self.user_data_dir(ctx),
            "--extensions-dir", os.path.join(ctx.state_dir, "extensions"),
            # Without --config it would write ~/.config/code-server/config.yaml (with a password).
            "--config", os.path.join(ctx.state_dir, "config.yaml"),
            "--disable-telemetry",
            "--disable-update-check",
            "--disable-workspace-trust",
            # Not --ignore-last-opened: on resume we want the folder the user last had open.
            self.target(ctx),
        ]

    def target(self, ctx: LaunchContext) -> str:
        """The folder (or .code-workspace) to open. code-server opens only a folder or workspace
        from its command line; a plain file there gives an empty window, so a file open_file is
        not passed and the working directory opens instead."""
        path = ctx.open_path()
        if path and (ctx.open_is_dir or path.endswith(".code-workspace")):
            return path
        return ctx.working_dir

    async def activity(self, client: IdeClient) -> Activity:
        """``/healthz`` (which itself does not count as activity) gives "alive" while a browser
        holds a connection or a request came in the last 60 s, and the time of the last heartbeat
        (refreshed at most once a minute). code-server says nothing about terminals or tasks."""
        health = await client.get_json("healthz")
        alive = health.get("status") == "alive"
        return Activity(
            executing=False,
            last_activity=from_epoch_ms(float(health.get("lastHeartbeat") or 0)),
            connections=1 if alive else 0,  # "at least one"; code-server gives no count
        )

    async def save_state(self, client: IdeClient, ctx: LaunchContext) -> dict[str, Any]:
        """Nothing to call: code-server keeps its state (settings, layout, open editors, the last opened
        folder) in the user-data dir as it goes, and SIGTERM lets it close cleanly. Unsaved edits live
        in the browser tab, not on the server."""
        return {
            "ide": self.name,
            "working_dir": ctx.working_dir,
            "user_data_dir": self.user_data_dir(ctx),
        }
