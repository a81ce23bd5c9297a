"""A session's places on disk: its socket directory and its persistent state directory.

The socket lives in ``<runtime_dir>/<uid>/``, a 0700 directory of the session's owner, so no
other local user can connect to the IDE; only the owner and the server (root) can. The state
directory lives in the owner's home and is created *as the owner*, so a symlink planted there
cannot make root create directories elsewhere.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from openworkbench.clusters.base import Account
from openworkbench.errors import LaunchFailed
from openworkbench.ides import PORT_PLACEHOLDER


def socket_path(runtime_dir: str, account: Account, session_id: str) -> str:
    return os.path.join(runtime_dir, str(account.uid), f"{session_id}.sock")


def prepare_runtime(runtime_dir: str, account: Account) -> None:
    """Create ``<runtime_dir>/<uid>`` owned by the user, mode 0700 (idempotent)."""
    base = Path(runtime_dir)
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    own = base / str(account.uid)
    own.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(own, account.uid, account.gid)
    os.chmod(own, 0o700)


def state_dir(account: Account, session_id: str) -> str:
    return os.path.join(account.home, ".local", "share", "openworkbench", "sessions", session_id)


def run_as(account: Account, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run a small command as the session's user: what it does in their home is done with their rights."""
    drop = os.geteuid() == 0 and account.uid != os.geteuid()
    return subprocess.run(
        argv,
        input=stdin,
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
    own = Path(path).parent
    own.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    own.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(own, account.uid, account.gid)
    try:
        os.unlink(path)  # a stale report from before a suspend must not be believed
    except FileNotFoundError:
        pass
    return path


def read_endpoint(path: str) -> str | None:
    """"host:port" once the job has written "host port"; None before."""
    try:
        host, port = Path(path).read_text().split()
    except (OSError, ValueError):
        return None
    return f"{host}:{int(port)}" if port.isdigit() else None


PICK_PORT = "/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])'"


def network_wrapper(argv: list[str], endpoint_file: str) -> list[str]:
    """Run ``argv`` on a node: pick a free port, report "host port", then exec the IDE on that port."""
    command = " ".join(shlex.quote(arg) for arg in argv).replace(PORT_PLACEHOLDER, '"$OWB_PORT"')
    tmp = shlex.quote(endpoint_file + ".tmp")
    script = (
        f"OWB_PORT=$({PICK_PORT}) || exit 1\n"
        f'printf "%s %s\\n" "$(hostname)" "$OWB_PORT" > {tmp} && mv {tmp} {shlex.quote(endpoint_file)} || exit 1\n'
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


def remove_tree(path: str) -> None:
    """Remove an IDE's per-run directory; rmtree never follows a symlink planted inside it."""
    shutil.rmtree(path, ignore_errors=True)


def tree_size(path: str) -> int:
    """Bytes under ``path`` (what a suspended session keeps on disk)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def remove_socket(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
