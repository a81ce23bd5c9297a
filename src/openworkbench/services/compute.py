"""``get_compute_envs``: the configured clusters and the IDEs this server can run."""

from __future__ import annotations

from typing import Any

from openworkbench.clusters.base import Cluster
from openworkbench.clusters.profiles import describe_profiles
from openworkbench.config import Settings
from openworkbench.ides import IDES, available


def compute_envs(settings: Settings, clusters: dict[str, Cluster]) -> dict[str, Any]:
    workbenches = {}
    for name, info in IDES.items():
        ide = settings.ides[name]
        workbenches[name] = {
            "default_cluster": ide.default_cluster or settings.default_cluster,
            "default_image": ide.default_image,
            "lang": {"name": info.lang, "available": available(ide, settings.sessions.ide_prefix)},
        }
    return {"clusters": [_with_profiles(cluster) for cluster in clusters.values()], "workbenches": workbenches}


def _with_profiles(cluster: Cluster) -> dict[str, Any]:
    """The cluster's ComputeEnv with its resource profiles; ``defaultImage`` empty: it runs no containers,
    and an empty image is what a client may send back (mirai sends this one in every launch_job)."""
    env = cluster.describe()
    env["resourceProfiles"] = describe_profiles(cluster.settings)
    env.setdefault("defaultImage", "")
    return env
