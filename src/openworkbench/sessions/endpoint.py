"""Who must serve a session's IDE; where its IDE on a cluster node listens, checked before it is believed.

The report is a file in a directory the session's user owns, read by root: ``files.read_endpoint``
checks the file itself (regular, the user's, short); this checks what it says (the job's own node).
"""

from __future__ import annotations

import functools

from openworkbench.clusters.base import Cluster
from openworkbench.clusters.slurm import SlurmCluster
from openworkbench.clusters.slurm.info import endpoint_host_refusal
from openworkbench.errors import LaunchFailed, UpstreamRefused
from openworkbench.proxy.upstream import Upstream
from openworkbench.safefs.sockets import expected_peer_uid
from openworkbench.services.jobs import posix_account
from openworkbench.sessions import files


def peer_uid(owner: str) -> int:
    """The uid that must serve ``owner``'s IDE sockets and write their endpoint files; -1 (matching nothing)
    for a user without a POSIX account (not remembered: the account may be created later)."""
    try:
        return _uid_of(owner)
    except LaunchFailed:
        return -1


@functools.lru_cache(maxsize=4096)
def _uid_of(owner: str) -> int:
    """Looked up once per user: a uid does not change under a live server, and this runs on the event loop."""
    return expected_peer_uid(posix_account(owner).uid)


def checked_endpoint(cluster: Cluster | None, path: str, uid: int | None, job_host: str,
                     shared_dir: str) -> Upstream | None:
    """Where the IDE listens once reported; None before; ``UpstreamRefused`` (with the reason) for a report that
    cannot be trusted. Blocking (the file, maybe Slurm's node list): run it in a thread."""
    found = files.read_endpoint(path, -1 if uid is None else uid, shared_dir)
    if found is None:
        return None
    if not isinstance(cluster, SlurmCluster):  # only Slurm runs sessions on nodes
        raise UpstreamRefused("the session's cluster has no nodes to run an IDE on: its endpoint is refused")
    refusal = endpoint_host_refusal(found[0], cluster.info(), job_host)
    if refusal is not None:
        raise UpstreamRefused(refusal + ": refused")
    return Upstream.tcp(*found)
