"""A session's places on disk: its socket directory and its persistent state directory.

The socket lives in ``<runtime_dir>/<uid>/``, a 0700 directory of the session's owner, so no
other local user can connect to the IDE; only the owner and the server (root) can. The state
directory lives in the owner's home and is created *as the owner*, so a symlink planted there
cannot make root create directories elsewhere.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess

from openworkbench.clusters.base import Account, login_environment
from openworkbench.errors import ConfigError, FileSystemError, LaunchFailed, PathMissing, UpstreamRefused
from openworkbench.ides import PORT_PLACEHOLDER
from openworkbench.safefs import paths

log = logging.getLogger(__name__)


def socket_path(runtime_dir: str, account: Account, session_id: str) -> str:
    return os.path.join(runtime_dir, str(account.uid), f"{session_id}.sock")


def prepare_runtime_root(runtime_dir: str) -> None:
    """At start-up: the runtime dir exists, is the server's, mode 0755, and no symlink; else no start."""
    try:
        paths.check_root_dir(runtime_dir, 0o755)
    except FileSystemError as exc:
        raise ConfigError(
            f"config key 'sessions.runtime_dir': {exc.message}. The runtime dir must be a directory of the "
            f"server's user that no one else can write; remove or move {runtime_dir} aside, then start again"
        ) from None


def prepare_runtime(runtime_dir: str, account: Account) -> None:
    """Create ``<runtime_dir>/<uid>`` owned by the user, mode 0700 (idempotent), never through a symlink."""
    try:
        paths.ensure_dir(os.path.join(runtime_dir, str(account.uid)), runtime_dir, 0o700, account.uid, account.gid)
    except FileSystemError as exc:
        raise LaunchFailed(f"cannot prepare the session's socket directory: {exc.message}") from None


def state_dir(account: Account, session_id: str) -> str:
    return os.path.join(account.home, ".local", "share", "openworkbench", "sessions", session_id)


def run_as(account: Account, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a small command as the session's user: what it does in their home is done with their rights."""
    drop = os.geteuid() == 0 and account.uid != os.geteuid()
    return subprocess.run(
        argv,
        input=stdin,
        env=login_environment(account),  # never the server's own (HOME=/root, its secrets)
        capture_output=True,
        text=True,
        check=False,
        user=account.uid if drop else None,
        group=account.gid if drop else None,
        extra_groups=list(account.groups) if drop else None,
    )


def prepare_state_dir(path: str, account: Account) -> None:
    """Create the session's state directory as its owner."""
    result = run_as(account, ["/bin/mkdir", "-p", "-m", "700", path])
    if result.returncode != 0:
        raise LaunchFailed(f"cannot create the session directory {path}: {result.stderr.strip()}")


def endpoint_path(shared_dir: str, session_id: str) -> str:
    return os.path.join(shared_dir, "sessions", session_id, "endpoint")


def prepare_endpoint(shared_dir: str, account: Account, session_id: str) -> str:
    """The user's own 0700 directory in the cluster's shared directory, for the job's "host port" report."""
    path = endpoint_path(shared_dir, session_id)
    own = os.path.dirname(path)
    try:
        paths.ensure_dir(os.path.dirname(own), shared_dir, 0o755)
        paths.ensure_dir(own, shared_dir, 0o700, account.uid, account.gid)
        paths.remove_file(path, shared_dir)  # a stale report from before a suspend must not be believed
    except FileSystemError as exc:
        raise LaunchFailed(f"cannot prepare the session's endpoint directory: {exc.message}") from None
    return path


ENDPOINT_MAX_BYTES = 512  # "host port\n": a host name is at most 253 bytes


def read_endpoint(path: str, uid: int, beneath: str) -> tuple[str, int] | None:
    """(host, port) once the job has written "host port"; None before.

    The file lies in a directory its user owns (below ``beneath``, the cluster's shared directory), and root
    reads it: it must be a regular file of ``uid`` (no symlink is followed on the way, a FIFO never blocks the
    reading thread) and short. Anything else raises ``UpstreamRefused`` naming the problem; the caller fails
    the session with that message.
    """
    try:
        fd = paths.open_file(path, beneath, uid=uid)
    except PathMissing:
        return None
    except FileSystemError as exc:
        raise UpstreamRefused(f"the IDE's endpoint file is refused: {exc.message}", path, uid) from None
    try:
        data = os.read(fd, ENDPOINT_MAX_BYTES + 1)
    finally:
        os.close(fd)
    return parse_endpoint(path, data)


def parse_endpoint(path: str, data: bytes) -> tuple[str, int]:
    """"host port" as the wrapper writes it (atomically: a file that says anything else was not its)."""
    words = data.decode("ascii", "replace").split() if len(data) <= ENDPOINT_MAX_BYTES else []
    if len(words) != 2 or not words[1].isdigit() or not 0 < int(words[1]) < 65536:
        raise UpstreamRefused(f"the IDE's endpoint file {path} does not hold 'host port': refused", path)
    return words[0], int(words[1])


PICK_PORT = "/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])'"


def network_wrapper(argv: list[str], endpoint_file: str) -> list[str]:
    """Run ``argv`` on a node: pick a free port, report "host port", then exec the IDE on that port."""
    command = " ".join(shlex.quote(arg) for arg in argv).replace(PORT_PLACEHOLDER, '"$OWB_PORT"')
    tmp = shlex.quote(endpoint_file + ".tmp")
    script = (
        f"OWB_PORT=$({PICK_PORT}) || exit 1\n"
        # Slurm's name for the node (what the server checks the report against), else the host name.
        f'printf "%s %s\\n" "${{SLURMD_NODENAME:-$(hostname)}}" "$OWB_PORT" > {tmp} '
        f"&& mv {tmp} {shlex.quote(endpoint_file)} || exit 1\n"
        f"exec {command}\n"
    )
    return ["/bin/sh", "-c", script]


def write_as(account: Account, path: str, text: str) -> None:
    """Write a file as the session's user (an IDE's own config), creating its directory."""
    result = run_as(account, ["/bin/sh", "-c", 'mkdir -p -m 700 "$(dirname "$1")" && cat > "$1"', "sh", path], text)
    if result.returncode != 0:
        raise LaunchFailed(f"cannot write {path}: {result.stderr.strip()}")


def remove_as(account: Account, path: str) -> None:
    """Remove a directory in the user's home as that user (a planted symlink cannot aim root elsewhere)."""
    run_as(account, ["/bin/rm", "-rf", "--", path])


def remove_tree(path: str, runtime_dir: str) -> None:
    """Remove an IDE's per-run directory (in the user's socket directory); no link in it is followed."""
    try:
        paths.remove_tree(path, runtime_dir)
    except FileSystemError as exc:
        log.warning("cannot remove %s: %s", path, exc.message)


def tree_size(path: str, home: str) -> int:
    """Bytes under ``path`` in the user's ``home`` (what a suspended session keeps on disk); a symlink on
    the way or inside is never followed, so the size says nothing of what the user cannot read."""
    try:
        return paths.tree_size(path, home)
    except FileSystemError as exc:
        log.warning("suspend size of %s not measured: %s", path, exc.message)
        return 0


def remove_socket(path: str, runtime_dir: str) -> None:
    paths.remove_file(path, runtime_dir)


def is_dir_as(account: Account, path: str) -> bool:
    """Whether ``path`` is a directory *for the user*: root's answer would tell her about paths she cannot
    read (through the IDE's argv or URL)."""
    return run_as(account, ["/usr/bin/test", "-d", path]).returncode == 0
