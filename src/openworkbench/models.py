"""The reference types of the Workbench API that clients send us, as pydantic models.

Clients written against the reference text use snake_case for job input, the Launcher's own
model uses camelCase: both spellings are accepted. Unknown keys are refused by name.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from openworkbench.config import LIMIT_TYPES

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_value(value: Any, free_text: bool) -> None:
    """Refuse what no name, path, argv or environment entry can hold (a NUL ends a C string; PostgreSQL
    refuses it in text) and numbers that are not finite (NaN compares false with every limit).

    ``free_text`` (commands, arguments, stdin, environment values) may hold tabs and newlines; names and
    paths hold no control character at all. Dict keys are names."""
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("must not contain a NUL byte")
        if not free_text and (found := _CONTROL.search(value)):
            raise ValueError(f"must not contain control characters (found {found.group()!r})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
    elif isinstance(value, list | tuple):
        for item in value:
            check_value(item, free_text)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_value(key, False)
            check_value(item, free_text)


def check_env_name(name: str) -> str:
    if not name or "=" in name or _CONTROL.search(name):
        raise ValueError(f"invalid environment variable name {name!r}: it must be non-empty, without '=' or "
                         "control characters")
    return name


class Checked(BaseModel):
    """Every field of every API input goes through ``check_value``; nested models check their own."""

    free_text_fields: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*")
    @classmethod
    def _safe_values(cls, value: Any, info: ValidationInfo) -> Any:
        check_value(value, info.field_name in cls.free_text_fields)
        return value


class _Input(Checked):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False,
                              allow_inf_nan=False)


def _alias(*names: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(*names))


class EnvironmentVariable(_Input):
    free_text_fields = frozenset({"value"})
    name: str = Field(min_length=1)
    value: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_env_name(value)


class PlacementConstraint(_Input):
    free_text_fields = frozenset({"value"})
    name: str = Field(min_length=1)
    value: str


class ResourceLimit(_Input):
    # The reference text says {name, value, valueType}; the Launcher says {type, value}.
    type: str = Field(validation_alias=AliasChoices("type", "name"))
    value: str
    valueType: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in LIMIT_TYPES:
            raise ValueError(f"unknown resource limit {value!r}; expected one of {list(LIMIT_TYPES)}")
        return value


class JobResources(_Input):
    """``job.resources`` (mirai's custom size): CPUs and memory in MB, i.e. cpuCount and memory limits."""

    cpus: int | float | None = Field(default=None, gt=0, le=2**31 - 1)
    memory: int | float | None = Field(default=None, gt=0, le=2**31 - 1)


class JobContainer(_Input):
    """``job.container``: the product's container request; Local and Slurm run none (see refuse_containers)."""

    image: str | None = None
    runAsUserId: int | None = Field(default=None, ge=0, le=2**32 - 1)
    runAsGroupId: int | None = Field(default=None, ge=0, le=2**32 - 1)


class JobSpec(_Input):
    """The ``job`` object of ``launch_job``."""

    free_text_fields = frozenset({"command", "args", "stdin", "config", "metadata"})
    name: str = Field(min_length=1)
    cluster: str | None = None
    exe: str | None = None
    command: str | None = None
    args: list[str] = []
    stdin: str = ""
    working_directory: str | None = _alias("working_directory", "workingDirectory")
    environment: list[EnvironmentVariable] = []
    tags: list[str] = []
    resource_limits: list[ResourceLimit] = Field(
        default=[], validation_alias=AliasChoices("resource_limits", "resourceLimits")
    )
    queues: list[str] = []
    placement_constraints: list[PlacementConstraint] = Field(
        default=[], validation_alias=AliasChoices("placement_constraints", "placementConstraints")
    )
    user: str | None = None
    container_image: str | None = _alias("container_image", "containerImage")
    config: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    exposed_ports: list[dict[str, Any]] = Field(
        default=[], validation_alias=AliasChoices("exposed_ports", "exposedPorts")
    )
    metadata: dict[str, Any] = {}
    # The product's own job fields (docs/api.md, "Product fields"): resolved by clusters/profiles.py.
    resource_profile: str | None = _alias("resource_profile", "resourceProfile")
    resources: JobResources | None = None
    container: JobContainer | None = None
    group: str | None = None

    @field_validator("environment", mode="before")
    @classmethod
    def _env_mapping(cls, value: Any) -> Any:
        # Accept {"NAME": "value"} as well as the reference's [{name, value}].
        if isinstance(value, dict):
            return [{"name": key, "value": val} for key, val in value.items()]
        return value

    @model_validator(mode="after")
    def _exe_or_command(self) -> JobSpec:
        if bool(self.exe) == bool(self.command):
            raise ValueError("exactly one of 'exe' or 'command' must be given")
        return self

    def limit(self, kind: str) -> str | None:
        for item in self.resource_limits:
            if item.type == kind:
                return item.value
        return None


class SessionHook(_Input):
    exe: str = Field(min_length=1)


class LaunchParameters(_Input):
    name: str = ""
    cluster: str = ""
    container_image: str = ""
    placement_constraints: list[PlacementConstraint] = []
    resource_limits: list[ResourceLimit] = []
    queues: list[str] = []
    default_image: str = ""
    container_images: list[str] = []
    resource_profile: str = ""
    aws_role_arn: str = ""
    databricks_instance: str = ""
    snowflake_account: str = ""
    snowflake_role: str = ""
