"""``[clusters."<name>"]``: a cluster's type, queues, limits and resource profiles, checked against each other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from openworkbench.config.sections import Section

LIMIT_TYPES = ("cpuCount", "cpuTime", "memory", "memorySwap")


class LimitSettings(Section):
    max: float | None = Field(default=None, gt=0)
    default: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _default_within_max(self) -> LimitSettings:
        if self.max is not None and self.default is not None and self.default > self.max:
            raise ValueError(f"default {self.default:g} is larger than max {self.max:g}")
        return self


class ProfileSettings(Section):
    """A resource profile (the product's ``resourceProfiles``): a named size a job or session asks for."""

    display_name: str = ""  # empty: the profile's name
    cpus: float | None = Field(default=None, gt=0, le=2**31 - 1)  # cpuCount; None: the cluster's default
    memory: float | None = Field(default=None, gt=0, le=2**31 - 1)  # MB; None: the cluster's default
    queue: str = ""  # a queue (Slurm partition) of the cluster; empty: the cluster's default
    constraints: list[str] = []  # placement constraints (Slurm features) of the cluster


DEFAULT_PROFILE = "default"


class ClusterSettings(Section):
    type: Literal["Local", "Slurm"]
    queues: list[str] = []
    placement_constraints: list[str] = []
    limits: dict[str, LimitSettings] = {}
    # Slurm only. The server host is a submit host: Slurm's commands, munge and slurm.conf are there.
    slurm_conf: str = ""  # path to slurm.conf (SLURM_CONF for every command); empty: Slurm's default
    slurm_bin: str = ""  # directory holding sbatch, squeue, scontrol, scancel, sacct; empty: PATH
    output_dir: str = ""  # shared by the server host and every compute node: job scripts and output
    poll_interval_s: float = Field(default=2.0, gt=0, le=300)
    # RLIMIT_FSIZE of every job: no file it writes grows past this (MB); 0: no limit.
    max_file_size_mb: int = Field(default=10240, ge=0)
    # Local only, with cgroups: pids.max of every job (processes and threads); 0: no limit.
    max_pids: int = Field(default=4096, ge=0)
    # Local only, with cgroups: the memory default of a job that gives none, in percent of this machine's
    # memory (capped by limits.memory.max), unless limits.memory.default is set; 0: none.
    default_memory_percent: float = Field(default=50, ge=0, le=100)
    # Resource profiles, listed in this order; none configured: a single built-in "default" profile.
    profiles: dict[str, ProfileSettings] = {}

    @model_validator(mode="after")
    def _profiles_name_what_exists(self) -> ClusterSettings:
        for name, profile in self.profiles.items():
            if not name or name == "custom":
                raise ValueError(f"profiles.{name!r}: 'custom' and the empty name are reserved")
            if profile.queue and self.queues and profile.queue not in self.queues:
                raise ValueError(f"profiles.{name}.queue: '{profile.queue}' is not one of the queues {self.queues}")
            unknown = sorted(set(profile.constraints) - set(self.placement_constraints))
            if unknown and self.type == "Local":
                raise ValueError(f"profiles.{name}.constraints: {unknown} not in placement_constraints")
        return self

    @model_validator(mode="after")
    def _slurm_needs_output_dir(self) -> ClusterSettings:
        if self.type == "Slurm" and not self.output_dir:
            raise ValueError("a Slurm cluster needs output_dir, a directory shared with its compute nodes")
        return self

    @model_validator(mode="after")
    def _local_only_keys(self) -> ClusterSettings:
        # Slurm has no per-job process limit, and a node's memory default is Slurm's own (DefMemPerNode):
        # a key that would change nothing is refused rather than ignored.
        given = sorted({"max_pids", "default_memory_percent"} & self.model_fields_set)
        if self.type == "Slurm" and given:
            raise ValueError(f"{', '.join(given)}: Local clusters only (Slurm cannot apply it)")
        return self

    @field_validator("limits")
    @classmethod
    def _known_limits(cls, value: dict[str, LimitSettings]) -> dict[str, LimitSettings]:
        unknown = sorted(set(value) - set(LIMIT_TYPES))
        if unknown:
            raise ValueError(f"unknown limit type(s) {unknown}; expected one of {list(LIMIT_TYPES)}")
        return value


