"""Resource profiles and the product's job fields (``resourceProfile``, ``resources``, ``container``).

A profile is a named size of a cluster (``[clusters.X.profiles.NAME]``). Applying one, or ``resources``,
turns the request into what every cluster already understands and checks: ``cpuCount`` / ``memory``
resource limits, a queue and placement constraints. Values given explicitly in ``resource_limits`` win
over those of the profile. Pure functions: no store, no API.
"""

from __future__ import annotations

from typing import Any

from openworkbench.clusters.base import container_image, limit_text
from openworkbench.config import DEFAULT_PROFILE, ClusterSettings, ProfileSettings
from openworkbench.errors import InvalidParameter
from openworkbench.models import JobSpec, PlacementConstraint, ResourceLimit

CUSTOM = "custom"  # the product's name for "no profile: the limits given"
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY_MB = 2048.0


def profiles_of(settings: ClusterSettings) -> dict[str, ProfileSettings]:
    """The cluster's profiles, in order; none configured: one "default" of the cluster's default limits
    (else 1 CPU, 2048 MB, within the configured maxima)."""
    if settings.profiles:
        return dict(settings.profiles)
    return {DEFAULT_PROFILE: ProfileSettings(display_name="Default", cpus=_default(settings, "cpuCount", DEFAULT_CPUS),
                                             memory=_default(settings, "memory", DEFAULT_MEMORY_MB))}


def _default(settings: ClusterSettings, kind: str, fallback: float) -> float:
    conf = settings.limits.get(kind)
    if conf is not None and conf.default is not None:
        return conf.default
    if conf is not None and conf.max is not None:
        return min(fallback, conf.max)
    return fallback


def describe_profiles(settings: ClusterSettings) -> list[dict[str, Any]]:
    """``resourceProfiles`` of ``get_compute_envs``: the first is what mirai uses when told nothing."""
    return [
        {"name": name, "displayName": profile.display_name or name,
         "cpus": profile.cpus, "memory": profile.memory,
         "queue": profile.queue, "placementConstraints": list(profile.constraints)}
        for name, profile in profiles_of(settings).items()
    ]


def resolve(cluster: str, settings: ClusterSettings, spec: JobSpec) -> JobSpec:
    """``spec`` with its profile and ``resources`` made into limits, queue and constraints; the profile's
    name (or "custom") recorded in ``resource_profile``; ``container.image`` checked like container_image."""
    container_image(spec)  # conflicting spellings are refused whatever the cluster
    limits = {item.type: item.value for item in spec.resource_limits}
    queues, constraints = list(spec.queues), list(spec.placement_constraints)
    name = spec.resource_profile or CUSTOM
    if name != CUSTOM:
        profile = _profile(cluster, settings, name)
        sized = {"cpuCount": profile.cpus, "memory": profile.memory}
        limits = {**{k: limit_text(v) for k, v in sized.items() if v is not None}, **limits}
        if profile.queue and not queues:
            queues = [profile.queue]
        named = {c.name for c in constraints}
        constraints += [PlacementConstraint(name=c, value="") for c in profile.constraints if c not in named]
    if spec.resources is not None:
        for kind, value in (("cpuCount", spec.resources.cpus), ("memory", spec.resources.memory)):
            if value is None:
                continue
            if any(item.type == kind for item in spec.resource_limits):
                raise InvalidParameter(f"job.resources and job.resource_limits both set {kind}: give one")
            limits[kind] = limit_text(float(value))
    return spec.model_copy(update={
        "resource_limits": [ResourceLimit(type=k, value=v) for k, v in limits.items()],
        "queues": queues, "placement_constraints": constraints, "resource_profile": name,
    })


def _profile(cluster: str, settings: ClusterSettings, name: str) -> ProfileSettings:
    known = profiles_of(settings)
    if name not in known:
        raise InvalidParameter(f"cluster '{cluster}' has no resource profile '{name}'; its profiles: "
                               f"{', '.join(known)} (or 'custom' for the limits given)")
    return known[name]

