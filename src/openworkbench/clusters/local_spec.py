"""Pure functions of the Local cluster: limits, the ComputeEnv, and the supervisor's spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from openworkbench.clusters.base import Account, checked_limit, login_environment, refuse_containers
from openworkbench.config import IDE_NAMES, ClusterSettings
from openworkbench.errors import InvalidParameter
from openworkbench.models import JobSpec


def machine_limits() -> dict[str, float]:
    """What this host can give a single job at most."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {"cpuCount": float(os.cpu_count() or 1), "memory": float(pages // (1024 * 1024))}


def effective_limits(settings: ClusterSettings, cgroups: bool = True) -> dict[str, tuple[float | None, float | None]]:
    """limit type -> (max, default): configured values, else what the machine has."""
    machine = machine_limits()
    result: dict[str, tuple[float | None, float | None]] = {}
    for kind in ("cpuCount", "memory", "cpuTime"):
        conf = settings.limits.get(kind)
        maximum = conf.max if conf and conf.max is not None else machine.get(kind)
        result[kind] = (maximum, conf.default if conf else None)
    result["memory"] = (result["memory"][0], default_memory(settings, cgroups))
    if "memorySwap" in settings.limits:
        conf = settings.limits["memorySwap"]
        result["memorySwap"] = (conf.max, conf.default)
    return result


def default_memory(settings: ClusterSettings, cgroups: bool) -> float | None:
    """The memory (MB) of a job that gives none: the configured default, else, where cgroups can enforce it,
    ``default_memory_percent`` of this machine's memory, capped by the configured max."""
    conf = settings.limits.get("memory")
    if conf is not None and conf.default is not None:
        return conf.default
    if not cgroups or not settings.default_memory_percent:
        return None
    share = float(machine_limits()["memory"] * settings.default_memory_percent // 100)
    return min(share, conf.max) if conf is not None and conf.max is not None else share


def pids_limit(settings: ClusterSettings, cgroups: bool) -> int | None:
    """pids.max of every job of the cluster; None where it is not enforced."""
    return settings.max_pids if cgroups and settings.max_pids else None


def _text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def describe_local(name: str, settings: ClusterSettings, cgroups: bool = True) -> dict[str, Any]:
    limits = [
        {"type": kind, "maxValue": _text(maximum), "defaultValue": _text(default)}
        for kind, (maximum, default) in effective_limits(settings, cgroups).items()
    ]
    if (pids := pids_limit(settings, cgroups)) is not None:  # the cluster's, not something a job asks for
        limits.append({"type": "pids", "maxValue": str(pids), "defaultValue": str(pids)})
    interactive = {"supports_interactive_sessions": True, "supports_adhoc_jobs": True}
    return {
        "name": name,
        "type": "Local",
        "supportsContainers": False,
        "queues": list(settings.queues),
        "config": [],
        "resourceLimits": limits,
        "placementConstraints": [{"name": c, "value": ""} for c in settings.placement_constraints],
        "resourceProfiles": [],
        "images": [],
        "workbenches": {ide: dict(interactive) for ide in IDE_NAMES},
    }


CGROUP_LIMITS = ("memory", "cpuCount")
MIN_VALUES = {"memory": 4.0, "cpuTime": 1.0}  # below these a limit cannot be applied as asked


def check_limits(cluster: str, settings: ClusterSettings, spec: JobSpec, cgroups: bool) -> None:
    """Refuse what the Local cluster cannot honour, naming the offending field."""
    refuse_containers(cluster, spec)
    unknown_queues = sorted(set(spec.queues) - set(settings.queues))
    if unknown_queues:
        raise InvalidParameter(f"cluster '{cluster}' has no queue(s) {unknown_queues}")
    known = set(settings.placement_constraints)
    bad = sorted({c.name for c in spec.placement_constraints} - known)
    if bad:
        raise InvalidParameter(f"cluster '{cluster}' has no placement constraint(s) {bad}")
    limits = effective_limits(settings)
    for item in spec.resource_limits:
        _checked_value(cluster, item.type, item.value, cgroups, limits.get(item.type, (None, None))[0])


def _checked_value(cluster: str, kind: str, text: str, cgroups: bool, maximum: float | None) -> float:
    if kind == "memorySwap":
        raise InvalidParameter(f"cluster '{cluster}' does not support the memorySwap limit")
    if kind in CGROUP_LIMITS and not cgroups:
        # Accepting a limit we cannot enforce would be a silent lie.
        raise InvalidParameter(f"cluster '{cluster}' cannot enforce {kind}: cgroups are not available")
    return checked_limit(kind, text, MIN_VALUES.get(kind), maximum, f"cluster '{cluster}'")


def _limit(spec: JobSpec, settings: ClusterSettings, kind: str) -> float | None:
    given = spec.limit(kind)
    if given is not None:
        return float(given)
    conf = settings.limits.get(kind)
    return conf.default if conf else None


def job_environment(spec: JobSpec, account: Account) -> dict[str, str]:
    """A clean login-like environment plus the job's own variables (which win)."""
    env = login_environment(account)
    env.update({item.name: item.value for item in spec.environment})
    return env


def working_directory(spec: JobSpec, account: Account) -> str:
    wanted = spec.working_directory or "~"
    if wanted == "~" or wanted.startswith("~/"):
        wanted = account.home + wanted[1:]
    return wanted if os.path.isabs(wanted) else os.path.join(account.home, wanted)


def job_argv(spec: JobSpec) -> list[str]:
    if spec.command:
        # The reference: "the job is run as: /bin/sh -c command arg1 arg2..."
        return ["/bin/sh", "-c", spec.command, *spec.args]
    assert spec.exe is not None
    return [spec.exe, *spec.args]


def render_spec(
    job_id: str,
    spec: JobSpec,
    account: Account,
    job_dir: Path,
    cgroup_root: str | None,
    settings: ClusterSettings | None = None,
) -> dict[str, Any]:
    """The supervisor's ``spec.json`` for this job."""
    conf = settings or ClusterSettings(type="Local")
    memory = _limit(spec, conf, "memory")
    if spec.limit("memory") is None:
        memory = default_memory(conf, cgroup_root is not None)
    cpu_time = _limit(spec, conf, "cpuTime")
    return {
        "argv": job_argv(spec),
        "env": job_environment(spec, account),
        "cwd": working_directory(spec, account),
        "uid": account.uid,
        "gid": account.gid,
        "groups": list(account.groups),
        "user": account.username,
        "stdout": str(job_dir / "stdout"),
        "stderr": str(job_dir / "stderr"),
        "stdin": spec.stdin,
        "limits": {
            "memory_mb": int(memory) if memory else None,
            "cpu_count": _limit(spec, conf, "cpuCount"),
            "cpu_time_s": int(cpu_time) if cpu_time else None,
            "pids_max": pids_limit(conf, cgroup_root is not None),
            "file_size_mb": conf.max_file_size_mb or None,
        },
        "cgroup_root": cgroup_root,
        "cgroup_name": f"openworkbench/{job_id}",
    }
