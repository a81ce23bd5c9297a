"""Directories and files the server touches as root where a user can plant a symlink, a FIFO or a hard link.

Every function takes ``beneath``: a directory the operator chose (a home from the passwd database, the
runtime dir checked at start-up, a cluster's output directory). It is opened by path, trusted; every
component of ``path`` below it is opened with ``O_NOFOLLOW`` through the previous one's file descriptor,
so a symlink anywhere under ``beneath`` is refused, never followed. Owners and modes are changed on file
descriptors (``fchown``/``fchmod``), never on a path that could be swapped between the check and the use.
OSError becomes :class:`FileSystemError` (or :class:`UnsafePath`) here, naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator

from openworkbench.errors import FileSystemError, PathMissing, UnsafePath

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang a thread
NOT_FOLLOWED = (errno.ELOOP, errno.ENOTDIR)  # what O_NOFOLLOW (| O_DIRECTORY) answers for a symlink


def _error(path: str, exc: OSError) -> FileSystemError:
    if exc.errno in NOT_FOLLOWED:
        return UnsafePath(f"{path} is a symbolic link or not a directory: refused")
    if exc.errno == errno.ENOENT:
        return PathMissing(f"{path} does not exist")
    return FileSystemError(f"{path}: {exc.strerror or exc}")


def _parts(path: str, beneath: str) -> list[str]:
    """The components of ``path`` below ``beneath``; refuses a path that is not below it."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(beneath))
    if rel == ".":
        return []
    if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
        raise UnsafePath(f"{path} is not inside {beneath}")
    return rel.split("/")


def open_dir(path: str, beneath: str) -> int:
    """A file descriptor of the directory ``path``, no symlink followed below ``beneath``."""
    try:
        fd = os.open(beneath, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error(beneath, exc) from None
    try:
        for part in _parts(path, beneath):
            new = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = new
    except OSError as exc:
        os.close(fd)
        raise _error(path, exc) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def opened_dir(path: str, beneath: str) -> Iterator[int]:
    fd = open_dir(path, beneath)
    try:
        yield fd
    finally:
        os.close(fd)


def ensure_dir(path: str, beneath: str, mode: int, uid: int | None = None, gid: int | None = None) -> None:
    """Create the directory ``path`` (its parent must exist) or take the one there, and give it ``mode`` and,
    as root, the owner ``uid``/``gid``. An existing one owned by anyone but the server or ``uid`` is refused."""
    name = os.path.basename(os.path.normpath(path))
    with opened_dir(os.path.dirname(os.path.normpath(path)), beneath) as parent:
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)  # the server's and private until fchown/fchmod below
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _error(path, exc) from None
    try:
        owner = os.fstat(fd).st_uid
        if owner not in (os.geteuid(), uid):
            raise UnsafePath(f"{path} belongs to uid {owner}, not to uid {uid if uid is not None else os.geteuid()}")
        if uid is not None and gid is not None and os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except OSError as exc:
        raise _error(path, exc) from None
    finally:
        os.close(fd)


def check_root_dir(path: str, mode: int = 0o755) -> None:
    """Make sure ``path`` is a directory of the server's user that no one else can write: created (with
    its missing parents) when absent; a symlink, another owner's or a group/other-writable one is refused.
    Its parent must not let others rename it away (not writable by others, or sticky like /tmp)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, mode)
        info = os.lstat(path)
        above = os.stat(parent)
    except OSError as exc:
        raise _error(path, exc) from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is a symbolic link or not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafePath(f"{path} belongs to uid {info.st_uid}, not to the server's uid {os.geteuid()}")
    if info.st_mode & 0o022:
        raise UnsafePath(f"{path} is writable by its group or by others (mode {stat.S_IMODE(info.st_mode):o})")
    if above.st_mode & 0o022 and not above.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"{parent}, the parent of {path}, is writable by others without the sticky bit")


def open_file(path: str, beneath: str, flags: int = os.O_RDONLY, uid: int | None = None) -> int:
    """Open the regular file ``path`` (never a symlink, FIFO or device); ``uid``: it must be that user's."""
    with opened_dir(os.path.dirname(path), beneath) as parent:
        try:
            fd = os.open(os.path.basename(path), flags | FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _error(path, exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if uid is not None and info.st_uid != uid:
            raise UnsafePath(f"{path} belongs to uid {info.st_uid}, not to uid {uid}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def seal_file(path: str, beneath: str, uid: int, gid: int) -> bool:
    """Make a finished job's output file root's and read-only (0440, group ``gid``): a hard link the user
    made to it can no longer change it. False when it is not there or not ``uid``'s (or root's) to seal."""
    try:
        fd = open_file(path, beneath)
    except FileSystemError:
        return False
    try:
        owner = os.fstat(fd).st_uid
        if owner not in (uid, os.geteuid()):
            return False
        if os.geteuid() == 0:
            os.fchown(fd, 0, gid)
        os.fchmod(fd, 0o440)
        return True
    except OSError:
        return False  # e.g. a root-squashed NFS output directory: the server cannot, as said in the docs
    finally:
        os.close(fd)


def tree_size(path: str, beneath: str) -> int:
    """Bytes of the files under ``path``; symlinks are counted as links, never followed. 0 if absent."""
    try:
        top = open_dir(path, beneath)
    except PathMissing:
        return 0
    total = 0
    try:
        # follow_symlinks=False: fwalk checks that each directory it enters is the one it listed.
        for _root, _dirs, names, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size
    finally:
        os.close(top)
    return total


def remove_tree(path: str, beneath: str) -> None:
    """Remove ``path`` and what is under it; a symlink there is removed itself, its target left alone."""
    try:
        parent = open_dir(os.path.dirname(os.path.normpath(path)), beneath)
    except (PathMissing, UnsafePath):
        return  # its directory is gone (or was swapped for a link): nothing of ours to remove
    name = os.path.basename(os.path.normpath(path))
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(name, dir_fd=parent)  # fd-based: it never follows a link inside either
        else:
            os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _error(path, exc) from None
    finally:
        os.close(parent)


def remove_file(path: str, beneath: str) -> None:
    """Unlink ``path`` (a link itself, never its target); nothing if it is absent."""
    try:
        parent = open_dir(os.path.dirname(path), beneath)
    except (PathMissing, UnsafePath):
        return  # gone, or a directory on the way is a symlink now: what it points to is not ours to remove
    try:
        os.unlink(os.path.basename(path), dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _error(path, exc) from None
    finally:
        os.close(parent)
