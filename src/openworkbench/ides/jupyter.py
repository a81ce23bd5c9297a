"""JupyterLab 4 and Jupyter Notebook 7: both are Jupyter Server extensions, started the same way.

The server listens on the session's Unix socket with ``base_url`` = the session prefix, so the proxy
forwards paths unchanged. It also requires a token (``JUPYTER_TOKEN``, set in the environment so it
does not show in ``ps``) which only the proxy sends: a second line of defence behind the socket's
0700 directory.
"""

from __future__ import annotations

import abc
import os
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

from openworkbench.ides.base import MAX_SOCKET_PATH, PORT_PLACEHOLDER, Activity, Ide, LaunchContext
from openworkbench.ides.client import IdeClient

# Activity probes must not count as activity: Jupyter records any authenticated API request unless
# it carries this argument (``api/status`` never counts).
QUIET = "no_track_activity=1"
# Kernel IPC socket names: "<runtime>/kernel-<36-char uuid>-ipc-<n>".
_KERNEL_IPC_SUFFIX = len("/kernel-") + 36 + len("-ipc-9")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Jupyter(Ide):
    lang = "Jupyter"
    strip_prefix = False
    supports_suspend = True
    ready_path = "api/status"
    supports_network = True  # it checks its own token
    secret_environment = ("JUPYTER_TOKEN",)
    app: ClassVar[str]  # the extension app whose default_url opens open_file

    def flags(self, ctx: LaunchContext) -> list[str]:
        flags = ["--no-browser", *self.listen_flags(ctx),
            f"--ServerApp.base_url={ctx.prefix}",
            # The proxy keeps the browser's Host header, which is not localhost.
            "--ServerApp.allow_remote_access=True",
            f"--ServerApp.root_dir={ctx.working_dir}",
            # Kernels on TCP would publish their output on 127.0.0.1 ports any local user can subscribe to.
            f"--KernelManager.transport={self.kernel_transport(ctx)}",
        ]
        url = self.default_url(ctx)
        if url:
            flags.append(f"--{self.app}.default_url={url}")
        return flags + self.app_flags(ctx)

    def app_flags(self, ctx: LaunchContext) -> list[str]:
        return []

    def listen_flags(self, ctx: LaunchContext) -> list[str]:
        if ctx.network:
            # On a cluster node: TCP on a port the job picks; the token is what keeps others out.
            return ["--ServerApp.ip=0.0.0.0", f"--ServerApp.port={PORT_PLACEHOLDER}", "--ServerApp.port_retries=0"]
        return [f"--ServerApp.sock={ctx.socket_path}", "--ServerApp.sock_mode=0600"]

    def kernel_transport(self, ctx: LaunchContext) -> str:
        if ctx.network:
            return "tcp"  # its runtime dir is under $HOME, too deep for IPC socket paths
        fits = len(os.fsencode(ctx.runtime_dir("jupyter"))) + _KERNEL_IPC_SUFFIX <= MAX_SOCKET_PATH
        return "ipc" if fits else "tcp"  # tcp still needs the HMAC key from the 0700 runtime dir to send

    def open_relative(self, ctx: LaunchContext) -> tuple[str, bool] | None:
        """open_file relative to root_dir, and whether it is a directory; None outside the root (unservable)."""
        path = ctx.open_path()
        if path is None:
            return None
        rel = os.path.relpath(path, ctx.working_dir)
        if rel == ".." or rel.startswith("../"):
            return None
        return ("" if rel == "." else rel), ctx.open_is_dir

    @abc.abstractmethod
    def default_url(self, ctx: LaunchContext) -> str | None:
        """The page (under base_url) the browser lands on: the one that opens open_file."""

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        # Runtime files (connection files with kernel keys, kernel IPC sockets) are transient and go
        # beside the session socket, in the user's 0700 directory, where socket paths stay short.
        runtime = os.path.join(ctx.state_dir, "runtime") if ctx.network else ctx.runtime_dir("jupyter")
        return {"JUPYTER_TOKEN": ctx.secret, "JUPYTER_RUNTIME_DIR": runtime}

    def transient_dirs(self, ctx: LaunchContext) -> list[str]:
        return [ctx.runtime_dir("jupyter")]  # its cookie secret stays behind even after a clean exit

    def upstream_headers(self, ctx: LaunchContext) -> dict[str, str]:
        return {"Authorization": f"token {ctx.secret}"}

    async def request_shutdown(self, client: IdeClient) -> bool:
        # Jupyter shuts its kernels and terminals down, then stops its loop: the process exits by itself.
        return await client.post("api/shutdown") == 200

    async def activity(self, client: IdeClient) -> Activity:
        """``api/status``: last activity (API, kernel and terminal output) and kernel connections;
        ``api/kernels``: a kernel whose execution_state is "busy" makes the session executing.
        A terminal counts only through its output, which moves last_activity: a silent command in a
        terminal is invisible to Jupyter's API."""
        status = await client.get_json("api/status")
        kernels = await client.get_json(f"api/kernels?{QUIET}")
        return Activity(
            executing=any(kernel.get("execution_state") == "busy" for kernel in kernels),
            last_activity=_parse_time(status.get("last_activity")),
            connections=int(status.get("connections", 0)),
        )

    async def save_state(self, client: IdeClient, ctx: LaunchContext) -> dict[str, Any]:
        """Record the open notebooks; there is nothing the server itself could flush to disk.

        Without real-time collaboration the server never holds unsaved notebook content: the browser
        does, until it saves (JupyterLab and Notebook autosave every 120 s). A GET-then-PUT would only
        rewrite the disk copy with itself, and a checkpoint would overwrite the user's own. So every
        notebook is already saved as far as the server knows; we note each one's last_modified so the
        manifest says which version was on disk when the session was suspended."""
        sessions = await client.get_json(f"api/sessions?{QUIET}")
        files: dict[str, str | None] = {}
        for item in sessions:
            path = item.get("path") or ""
            if item.get("type") == "notebook" and path and path not in files:
                model = await client.get_json(f"api/contents/{quote(path)}?content=0&{QUIET}")
                files[path] = model.get("last_modified")
        kernels = sorted({(item.get("kernel") or {}).get("name", "") for item in sessions} - {""})
        return {
            "ide": self.name,
            "saved_at": datetime.now(UTC).isoformat(),
            "working_dir": ctx.working_dir,
            "open": sorted(files),
            "last_modified": files,
            "kernels_lost": kernels,
            **await self.app_state(client, ctx),
        }

    async def app_state(self, client: IdeClient, ctx: LaunchContext) -> dict[str, Any]:
        return {}


class JupyterLab(_Jupyter):
    name = "JupyterLab"
    project_id = "21f2ed72"
    app = "LabApp"

    def workspaces_dir(self, ctx: LaunchContext) -> str:
        return os.path.join(ctx.state_dir, "lab-workspaces")

    def app_flags(self, ctx: LaunchContext) -> list[str]:
        # The layout (open tabs, panels) lives in the session's state dir, so it survives suspend and
        # resume restores it. User settings stay in the user's home (~/.jupyter/lab/user-settings).
        return [f"--LabApp.workspaces_dir={self.workspaces_dir(ctx)}"]

    def default_url(self, ctx: LaunchContext) -> str | None:
        opened = self.open_relative(ctx)
        return None if opened is None else "/lab/tree/" + quote(opened[0])

    async def app_state(self, client: IdeClient, ctx: LaunchContext) -> dict[str, Any]:
        listing = await client.get_json(f"lab/api/workspaces?{QUIET}")
        ids = listing.get("workspaces", {}).get("ids", [])
        return {"workspaces_dir": self.workspaces_dir(ctx), "workspaces": sorted(ids)}


class JupyterNotebook(_Jupyter):
    name = "Jupyter Notebook"
    project_id = "2cb256d2"
    app = "JupyterNotebookApp"

    def default_url(self, ctx: LaunchContext) -> str | None:
        opened = self.open_relative(ctx)
        if opened is None:
            return None
        rel, is_dir = opened
        if is_dir:
            return "/tree/" + quote(rel)
        return ("/notebooks/" if rel.endswith(".ipynb") else "/edit/") + quote(rel)
