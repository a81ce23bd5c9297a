"""The contract every IDE implements: how to start it under a URL prefix, how to tell it is ready,
how to read its activity, how to ask it to stop, and what it saves when a session is suspended.

An ``Ide`` is pure configuration plus a few HTTP conversations through an ``IdeClient``; it never
starts or signals processes itself: the session layer runs ``argv``/``environment`` as a job of the
session's user and does the signalling.
"""

from __future__ import annotations

import abc
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from openworkbench.config import IdeSettings
from openworkbench.errors import NotAvailable
from openworkbench.proxy.upstream import Upstream

if TYPE_CHECKING:
    from openworkbench.ides.client import IdeClient

# sun_path is 108 bytes with its NUL: longer socket paths cannot be bound at all.
MAX_SOCKET_PATH = 107
PORT_PLACEHOLDER = "@OWB_PORT@"  # replaced by the port the job picks on its node


def resolve_exe(settings: IdeSettings, ide_prefix: str) -> str | None:
    """The IDE's executable: absolute, relative to the IDE prefix, or found on PATH."""
    exe = settings.exe
    if not exe:
        return None
    if os.path.isabs(exe) or "/" in exe:
        path = exe if os.path.isabs(exe) else os.path.join(ide_prefix, exe)
        return path if os.access(path, os.X_OK) else None
    return shutil.which(exe)


def available(settings: IdeSettings, ide_prefix: str) -> bool:
    """An IDE is available when it is enabled and its executable is found."""
    return settings.enabled and resolve_exe(settings, ide_prefix) is not None


@dataclass(frozen=True)
class LaunchContext:
    session_id: str
    prefix: str  # public URL prefix the browser uses, e.g. "/s/0da29cfc78a31acdd5861/" (ends with "/")
    socket_path: str  # the Unix socket the IDE must listen on; its directory is 0700 and owned by the user
    secret: str  # per-session secret (url-safe); the proxy sends upstream_headers(ctx) on every request
    state_dir: str  # per-session persistent directory owned by the user; survives suspend/resume
    working_dir: str  # absolute path
    open_file: str | None
    home: str
    user: str = ""  # the session's POSIX user name (RStudio's --server-user needs it)
    # Loopback TCP port, only for an IDE that cannot listen on a socket (RStudio): allocated for the run
    # from sessions.port_range (proxy/ports.py).
    port: int | None = None
    # On a cluster node (Slurm) the IDE listens on TCP, on a port chosen on the node when the job
    # starts: its flags carry PORT_PLACEHOLDER, and ``endpoint`` (the node's host and port) is known once it runs.
    network: bool = False
    endpoint: Upstream | None = None
    # The uid that must own and serve ``socket_path`` (the session's user); None: the server's own user.
    uid: int | None = None
    # Whether open_path() is a directory, as its user sees it (the session layer asks as the user).
    open_is_dir: bool = False

    def runtime_dir(self, kind: str) -> str:
        """A short per-session directory beside the socket (same 0700 parent) for transient files and
        further sockets: the state directory under $HOME is too deep for 107-byte socket paths."""
        return os.path.join(os.path.dirname(self.socket_path), f"{self.session_id}-{kind}")

    def open_path(self) -> str | None:
        """``open_file`` made absolute (a relative one is relative to the working directory)."""
        if not self.open_file:
            return None
        return os.path.normpath(os.path.join(self.working_dir, self.open_file))


@dataclass(frozen=True)
class Activity:
    executing: bool  # kernels busy / IDE busy
    last_activity: datetime | None  # the IDE's own idea of its last activity (aware UTC)
    connections: int


def from_epoch_ms(ms: float) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None


class Ide(abc.ABC):
    name: ClassVar[str]
    lang: ClassVar[str]
    project_id: ClassVar[str]
    strip_prefix: ClassVar[bool]  # the proxy removes the prefix (the IDE has no base-path option)
    supports_suspend: ClassVar[bool]
    ready_path: ClassVar[str]  # relative to the prefix, probed through the socket; 200 = ready
    uses_socket: ClassVar[bool] = True  # False: it listens on 127.0.0.1:ctx.port instead
    # True: it can run on another host behind a secret it checks itself (Jupyter's token); code-server
    # with --auth none on a TCP port would be open to anyone on the network.
    supports_network: ClassVar[bool] = False
    # Variables of environment() that carry the session secret: never shown in the job's API record.
    secret_environment: ClassVar[tuple[str, ...]] = ()
    # (process name, signal) that makes the IDE write its own state to disk before it is stopped;
    # the session layer sends it to the job's processes of that name when it suspends.
    self_suspend: ClassVar[tuple[str, int] | None] = None

    def __init__(self, settings: IdeSettings, ide_prefix: str) -> None:
        self.settings = settings
        self.ide_prefix = ide_prefix

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def executable(self) -> str | None:
        return resolve_exe(self.settings, self.ide_prefix)

    def available(self) -> bool:
        return available(self.settings, self.ide_prefix)

    def argv(self, ctx: LaunchContext) -> list[str]:
        """Full argv: the executable, our flags, then the configured extra args (which can override ours)."""
        exe = self.executable()
        if exe is None or not self.settings.enabled:
            why = "it is disabled" if not self.settings.enabled else f"executable '{self.settings.exe}' not found"
            raise NotAvailable(f"{self.name} is not available on this server: {why}")
        return [exe, *self.flags(ctx), *self.settings.args]

    @abc.abstractmethod
    def flags(self, ctx: LaunchContext) -> list[str]:
        """Our command-line flags (argv without the executable and without settings.args)."""

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        """Extra environment, merged over the job's login-like one (HOME, USER, PATH, ...)."""
        return {}

    def config_files(self, ctx: LaunchContext) -> dict[str, str]:
        """Files (absolute path -> text) to write, as the session's user, before the IDE starts."""
        return {}

    def transient_dirs(self, ctx: LaunchContext) -> list[str]:
        """Directories the IDE makes for one run (runtime files, kernel sockets): remove them once the
        process has ended, like its socket (the IDE may leave files there, Jupyter always does)."""
        return []

    def upstream_headers(self, ctx: LaunchContext) -> dict[str, str]:
        return {}

    def upstream(self, ctx: LaunchContext) -> Upstream | None:
        """Where the IDE of ``ctx`` listens: the one answer the IDE client, the proxy's route and its pool use.
        Its socket (served by the session's user), the port it reported from a cluster node, or its loopback
        port; None while not known (a node that has not reported yet, a loopback port not allocated)."""
        if ctx.network:
            return ctx.endpoint
        if self.uses_socket:
            return Upstream.unix(ctx.socket_path, os.geteuid() if ctx.uid is None else ctx.uid)
        return None if ctx.port is None else Upstream.tcp("127.0.0.1", ctx.port)

    async def request_shutdown(self, client: IdeClient) -> bool:
        """Ask the IDE to exit by itself; True if it accepted. Default: no such API (the server signals)."""
        return False

    @abc.abstractmethod
    async def activity(self, client: IdeClient) -> Activity: ...

    async def save_state(self, client: IdeClient, ctx: LaunchContext) -> dict[str, Any]:
        """Before suspend: save what can be saved; return a JSON-able manifest the server keeps."""
        return {}

    def restore_args(self, ctx: LaunchContext, manifest: dict[str, Any]) -> list[str]:
        """Extra argv on resume (appended after ``argv``)."""
        return []
