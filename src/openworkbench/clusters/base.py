"""The contract every cluster backend fulfils.

A backend knows how to start a job, find out where its jobs are, stop them and where their
output lives. Everything it needs to find a job again after a server restart goes into
``JobState.cluster_state``, which the server stores with the job. Backends never import the
API or the store: they get plain data and return plain data.
"""

from __future__ import annotations

import abc
import math
import os
from dataclasses import dataclass, field
from typing import Any

from openworkbench.config import ClusterSettings
from openworkbench.errors import InvalidParameter
from openworkbench.models import JobSpec

ACTIVE_STATUSES = frozenset({"Pending", "Running", "Suspended"})
FINAL_STATUSES = frozenset({"Finished", "Failed", "Killed", "Canceled"})
# What a limit may be where the cluster knows no maximum: beyond any machine, within what the kernel's
# rlimits and Slurm's options take without overflow.
HARD_MAX = float(2**31 - 1)
# Errors of one job's data (a NaN limit, a mangled cluster_state, a spec that no longer validates), as opposed
# to errors of the environment (OSError, WorkbenchError) that a later poll may not meet again.
BAD_ROW_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, LookupError, ArithmeticError, AttributeError)


@dataclass(frozen=True)
class Account:
    """The POSIX identity a job runs as."""

    username: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str


DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def login_environment(account: Account) -> dict[str, str]:
    """The environment of every process the server starts as a user (jobs, hooks, IDEs, helpers): what a
    login would give, the user's own; nothing of the server's (its HOME=/root, secrets in its variables)."""
    return {
        "HOME": account.home,
        "USER": account.username,
        "LOGNAME": account.username,
        "SHELL": account.shell or "/bin/sh",
        "PATH": DEFAULT_PATH,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


@dataclass
class JobState:
    """What a backend reports about one job; ``None`` fields mean "unchanged"."""

    status: str
    status_message: str = ""
    exit_code: int | None = None
    pid: int | None = None
    host: str | None = None
    stdout_file: str | None = None
    stderr_file: str | None = None
    cluster_state: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobRef:
    """A stored job, as a backend sees it."""

    id: str
    status: str
    spec: JobSpec
    account: Account | None
    cluster_state: dict[str, Any] = field(default_factory=dict)


def container_image(spec: JobSpec) -> str:
    """The image the job asks for (``container.image`` or ``container_image``); empty: none."""
    nested = spec.container.image if spec.container is not None else None
    if nested and spec.container_image and nested != spec.container_image:
        raise InvalidParameter(f"job.container.image ({nested!r}) and job.container_image "
                               f"({spec.container_image!r}) differ: give one")
    return nested or spec.container_image or ""


def refuse_containers(cluster: str, spec: JobSpec) -> None:
    """Neither Local nor Slurm runs containers: say so instead of ignoring the request. An empty or null
    image is no request (mirai sends the cluster's ``defaultImage``, which is empty here)."""
    image = container_image(spec)
    if image:
        raise InvalidParameter(f"cluster '{cluster}' runs no containers: the container image must be empty or "
                               f"null, got {image!r} (this cluster does not support containers)")
    container = spec.container
    if container is not None and (container.runAsUserId is not None or container.runAsGroupId is not None):
        raise InvalidParameter(f"cluster '{cluster}' runs no containers: job.container.runAsUserId/runAsGroupId "
                               "cannot be honoured (jobs run as their user; use job.group for the group)")
    for field_name in ("mounts", "exposed_ports"):
        if getattr(spec, field_name):
            raise InvalidParameter(f"cluster '{cluster}' does not support '{field_name}'")
    if spec.config:
        names = sorted({str(item.get("name", "?")) for item in spec.config})
        raise InvalidParameter(f"cluster '{cluster}' has no job config option(s) {names} (its config list in "
                               "get_compute_envs is empty)")


def limit_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def checked_limit(kind: str, text: str, least: float | None, maximum: float | None, where: str) -> float:
    """The value of a resource limit: a finite number from ``least`` (else above 0) to ``maximum`` (else
    HARD_MAX), or InvalidParameter naming the limit and the range ``where`` (e.g. "cluster 'Local'") takes."""
    top = HARD_MAX if maximum is None else maximum
    bound = f"at least {least:g}" if least else "positive"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidParameter(f"resource limit {kind} must be a number ({bound}, at most {limit_text(top)} on "
                               f"{where}), got {text!r}")
    if value <= 0 or (least is not None and value < least):
        raise InvalidParameter(f"resource limit {kind} must be {bound} (and at most {limit_text(top)} on {where}), "
                               f"got {text}")
    if value > top:
        raise InvalidParameter(f"resource limit {kind}={text} exceeds the maximum {limit_text(top)} of {where}")
    return value


class Cluster(abc.ABC):
    type: str = ""
    # Jobs may wait in the cluster's own queue (a batch scheduler). A session start waiting there costs this
    # server nothing, so it gives up its start slot (services/start_queue.py) while its job is Pending.
    queues_jobs = False

    def __init__(self, name: str, settings: ClusterSettings) -> None:
        self.name = name
        self.settings = settings

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """This cluster as a ComputeEnv of ``get_compute_envs``."""

    @abc.abstractmethod
    def validate(self, spec: JobSpec) -> None:
        """Raise InvalidParameter when the spec asks for what this cluster cannot give."""

    @abc.abstractmethod
    def submit(self, job_id: str, spec: JobSpec, account: Account) -> JobState:
        """Start the job; raise LaunchFailed when the cluster refuses it."""

    @abc.abstractmethod
    def poll(self, jobs: list[JobRef]) -> dict[str, JobState]:
        """The current state of every job given (one scheduler query for all); omit unchanged ones."""

    @abc.abstractmethod
    def stop(self, job: JobRef, force: bool) -> JobState | None:
        """Ask the job to stop (SIGTERM, or SIGKILL with ``force``); a state when it ended at once."""

    def close(self) -> None:
        """Release what the backend holds (child handles, connections)."""
