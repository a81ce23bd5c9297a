"""What a live Slurm cluster offers (partitions, nodes, features), as a ComputeEnv and as launch checks.

Pure: ``ClusterInfo`` is built from parsed ``scontrol show partition`` and ``sinfo`` output. Queues
and placement constraints may be narrowed by the cluster's config (``queues``,
``placement_constraints``); configured limits cap what the cluster has and give defaults.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from openworkbench.clusters.base import checked_limit, refuse_containers
from openworkbench.clusters.slurm.parse import Node, Partition
from openworkbench.config import IDE_NAMES, ClusterSettings
from openworkbench.errors import InvalidParameter
from openworkbench.models import JobSpec

NETWORK_IDES = ("JupyterLab", "Jupyter Notebook")  # the IDEs sessions may run on a node

LIMIT_KINDS = ("cpuCount", "memory", "cpuTime")  # memorySwap: Slurm has no per-job swap limit
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ClusterInfo:
    partitions: tuple[Partition, ...]
    nodes: tuple[Node, ...]

    def queues(self, settings: ClusterSettings) -> list[str]:
        names = [p.name for p in self.partitions]
        return [n for n in names if n in settings.queues] if settings.queues else names

    def features(self, settings: ClusterSettings) -> list[str]:
        found = sorted({f for node in self.nodes for f in node.features})
        allowed = settings.placement_constraints
        return [f for f in found if f in allowed] if allowed else found

    def maxima(self, partitions: list[str]) -> dict[str, float | None]:
        """The most one job can get in any of ``partitions``: CPUs, MB, seconds (None: no limit known)."""
        chosen = [p for p in self.partitions if p.name in partitions]
        cpus: list[float] = []
        memory: list[float] = []
        for part in chosen:
            nodes = [n for n in self.nodes if part.name in n.partitions]
            if nodes:
                cpus.append(min(max(n.cpus for n in nodes), part.max_cpus_per_node or math.inf))
                memory.append(min(max(n.memory_mb for n in nodes), part.max_mem_per_node or math.inf))
        times = [p.max_time_s for p in chosen]
        return {
            "cpuCount": max(cpus) if cpus else None,
            "memory": max(memory) if memory else None,
            "cpuTime": None if not times or None in times else float(max(t for t in times if t is not None)),
        }

    def default_partitions(self, settings: ClusterSettings) -> list[str]:
        """Where a job that names no queue goes: Slurm's default partition (or any we offer)."""
        offered = self.queues(settings)
        defaults = [p.name for p in self.partitions if p.default and p.name in offered]
        return defaults or offered


def effective_max(kind: str, settings: ClusterSettings, live: float | None) -> float | None:
    """A configured max caps what the cluster has (it never raises it: Slurm would refuse the job)."""
    conf = settings.limits.get(kind)
    known = [v for v in (conf.max if conf else None, live) if v is not None]
    return min(known) if known else None


def _text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def describe_slurm(name: str, settings: ClusterSettings, info: ClusterInfo) -> dict[str, Any]:
    """The ComputeEnv of ``get_compute_envs``, read from the live cluster."""
    maxima = info.maxima(info.queues(settings))
    limits = []
    for kind in LIMIT_KINDS:
        conf = settings.limits.get(kind)
        limits.append({
            "type": kind,
            "maxValue": _text(effective_max(kind, settings, maxima[kind])),
            "defaultValue": _text(conf.default if conf else None),
        })
    return {
        "name": name,
        "type": "Slurm",
        "supportsContainers": False,
        "queues": info.queues(settings),
        "config": [],
        "resourceLimits": limits,
        "placementConstraints": [{"name": f, "value": ""} for f in info.features(settings)],
        "resourceProfiles": [],
        "images": [],
        # On a node an IDE listens on TCP, so it must check the session secret itself: Jupyter does
        # (its token); code-server and rserver cannot, so their sessions stay off Slurm.
        "workbenches": {ide: {"supports_interactive_sessions": ide in NETWORK_IDES, "supports_adhoc_jobs": True}
                        for ide in IDE_NAMES},
    }


def check_spec(cluster: str, settings: ClusterSettings, info: ClusterInfo, spec: JobSpec) -> None:
    """Refuse, before anything is submitted, what this Slurm cluster cannot give, naming the field."""
    refuse_containers(cluster, spec)
    for var in spec.environment:
        if not ENV_NAME.match(var.name) or "\0" in var.value:
            raise InvalidParameter(f"environment variable {var.name!r} is not a valid name=value pair")
    offered = info.queues(settings)
    unknown = sorted(set(spec.queues) - set(offered))
    if unknown:
        raise InvalidParameter(f"cluster '{cluster}' has no queue(s) {unknown}; its partitions: {offered}")
    features = info.features(settings)
    bad = sorted({c.name for c in spec.placement_constraints} - set(features))
    if bad:
        raise InvalidParameter(f"cluster '{cluster}' has no placement constraint(s) {bad}; its features: {features}")
    partitions = list(spec.queues) or info.default_partitions(settings)
    maxima = info.maxima(partitions)
    where = f"partition(s) {','.join(partitions)} of cluster '{cluster}'"
    for item in spec.resource_limits:
        maximum = effective_max(item.type, settings, maxima.get(item.type))
        checked_value(cluster, item.type, item.value, maximum, where)


def checked_value(cluster: str, kind: str, text: str, maximum: float | None = None, where: str = "") -> float:
    if kind == "memorySwap":
        raise InvalidParameter(f"cluster '{cluster}' does not support the memorySwap limit")
    value = checked_limit(kind, text, None, maximum, where or f"cluster '{cluster}'")
    if kind == "cpuCount" and not value.is_integer():
        # --cpus-per-task takes whole CPUs; rounding up would hand out more than was asked.
        raise InvalidParameter(f"resource limit cpuCount must be a whole number on Slurm, got {text}")
    return value


def endpoint_host_refusal(host: str, info: ClusterInfo, job_nodes: str) -> str | None:
    """Why a session's job may not send the proxy to ``host`` (None: it may).

    The job reports where its IDE listens, from a file its user can write: the host must be one of the
    cluster's nodes and, once Slurm has said where the job runs (``job_nodes``), that node; else a user could
    send the server's proxy to any host and port it can reach (a metadata service, another user's IDE).
    """
    names = {node.name.lower() for node in info.nodes}
    if host.lower() not in names:
        return f"the IDE reported host '{host}', which is not a node of the cluster"
    if job_nodes and host.lower() != job_nodes.lower():
        return f"the IDE reported host '{host}', but Slurm runs the session's job on '{job_nodes}'"
    return None
