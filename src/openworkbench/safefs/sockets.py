"""Connecting, as root, to a Unix socket in a directory a user owns, without being her confused deputy.

The user can put anything at the socket's path: a symlink to another user's IDE, a hard link to a root-only
socket (a docker.sock), a socket her own process or someone else's serves. Two checks close that:

* before connecting, the path is opened ``O_PATH|O_NOFOLLOW`` and the opened inode must be a socket owned by
  the expected uid; the connection then goes through ``/proc/self/fd/<fd>``, that very inode, so swapping
  the path between the check and the connect achieves nothing;
* after connecting, ``SO_PEERCRED`` (the credentials of whoever called ``listen``) must carry that uid.

Both raise ``UpstreamRefused``; a missing or dead socket raises ``OSError`` (not listening is not an attack).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct

from openworkbench.errors import UpstreamRefused

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
REFUSED = ("Refused to connect to the session's IDE: what listens at its socket is not the session's own IDE "
           "(the socket was replaced, or is served by another user)")


def expected_peer_uid(owner_uid: int) -> int:
    """Who must serve a session's socket: its owner when the server is root, else the server's own user
    (then every session runs as the server's user)."""
    return owner_uid if os.geteuid() == 0 else os.geteuid()


def open_socket_path(path: str, uid: int) -> int:
    """An ``O_PATH`` descriptor of the socket at ``path`` (never followed), checked to be a socket owned by
    ``uid``; the caller connects through ``/proc/self/fd/<fd>`` and closes it."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)  # FileNotFoundError: not listening yet
    try:
        info = os.fstat(fd)
        if stat.S_ISLNK(info.st_mode):  # O_NOFOLLOW|O_PATH opens a symlink itself
            raise UpstreamRefused(REFUSED, f"{path} is a symbolic link", uid)
        if not stat.S_ISSOCK(info.st_mode):
            raise UpstreamRefused(REFUSED, f"{path} is not a socket", uid)
        if info.st_uid != uid:
            raise UpstreamRefused(REFUSED, f"{path} is owned by another user", uid, info.st_uid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process that made the connected socket's peer listen (``SO_PEERCRED``)."""
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def check_peer(sock: socket.socket, path: str, uid: int) -> None:
    """Refuse a connected socket whose peer is not ``uid``; the caller closes it."""
    actual = peer_uid(sock)
    if actual != uid:
        raise UpstreamRefused(REFUSED, f"{path} is served by another user's process", uid, actual)


async def connect_checked(path: str, uid: int) -> socket.socket:
    """A non-blocking connected Unix socket to ``path``, served by ``uid`` (both checks above)."""
    fd = open_socket_path(path, uid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, f"/proc/self/fd/{fd}")
        check_peer(sock, path, uid)
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(fd)
    return sock
