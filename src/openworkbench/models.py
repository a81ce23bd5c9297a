"""The reference types of the Workbench API that clients send us, as pydantic models.

Clients written against the reference text use snake_case for job input, the Launcher's own
model uses camelCase: both spellings are accepted. Unknown keys are refused by name.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from openworkbench.config import LIMIT_TYPES


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False)


def _alias(*names: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(*names))


class EnvironmentVariable(_Input):
    name: str = Field(min_length=1)
    value: str


class PlacementConstraint(_Input):
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


class JobSpec(_Input):
    """The ``job`` object of ``launch_job``."""

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
