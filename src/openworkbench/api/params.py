"""The kwparams of each RPC method. Unknown keys are refused by name; types are strict."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from openworkbench.models import Checked, EnvironmentVariable, JobSpec, LaunchParameters, SessionHook

NAME_MAX = 255  # the store's column for job, session and user names
TIMESTAMP_MAX = 253402214400.0  # 9999-12-31T00:00:00Z: seconds since the epoch that datetime still holds


class Params(Checked):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class NoParams(Params):
    pass


class GetComputeEnvs(Params):
    user: str | None = None


class LaunchJob(Params):
    job: JobSpec
    apply_config_settings: bool = True

    @field_validator("job")
    @classmethod
    def _name_fits(cls, job: JobSpec) -> JobSpec:
        if len(job.name) > NAME_MAX:
            raise ValueError(f"the job name is {len(job.name)} characters long; at most {NAME_MAX} are kept")
        return job


class GetJobOutput(Params):
    job_id: str = Field(min_length=1)
    user: str | None = None


class StopJob(Params):
    job_id: str = Field(min_length=1)
    force_quit: bool = False


class GetSession(Params):
    session_id: str | None = None
    user: str | None = None
    fields: list[str] | None = None
    include_jobs: bool = False
    include_all_jobs: bool = False
    # A previous answer's (the server's clock): only what changed. Bounded to what a datetime holds, which the
    # delta's store query converts it to.
    timestamp: float | None = Field(default=None, allow_inf_nan=False, ge=0, le=TIMESTAMP_MAX)
    include_projects: bool = False  # adds "projects" (services/projects.py)


class LaunchSession(Params):
    free_text_fields = frozenset({"environment"})
    workbench: str
    username: str | None = None
    name: str | None = Field(default=None, max_length=NAME_MAX)
    open_file: str | None = None
    working_directory: str | None = None
    launch_parameters: LaunchParameters | None = None
    start_hooks: list[SessionHook] | SessionHook | None = None
    stop_hooks: list[SessionHook] | SessionHook | None = None
    environment: list[dict[str, str]] | dict[str, str] | None = None
    project_id: str | None = Field(default=None, max_length=64)  # open in that project's directory

    @field_validator("environment")
    @classmethod
    def _valid_variables(cls, value: Any) -> Any:
        items = [{"name": k, "value": v} for k, v in value.items()] if isinstance(value, dict) else value or []
        for item in items:
            EnvironmentVariable.model_validate(item)  # its errors name the variable
        return value


class ResumeSession(Params):
    session_id: str = Field(min_length=1)
    username: str | None = None
    launch_parameters: LaunchParameters | None = None


class StopSession(Params):
    session_ids: str = Field(min_length=1)
    force_quit: bool = False
    suspend_session: bool = False
    suspend: bool = False


class GetHistoricalSession(Params):
    filter_time_begin: datetime | None = None  # ISO-8601, on the end time; without a zone: UTC
    filter_time_end: datetime | None = None
    include_jobs: bool = False
    include_all_users: bool = False

    @field_validator("filter_time_begin", "filter_time_end", mode="before")
    @classmethod
    def _iso8601(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("expected an ISO-8601 date and time as a string, e.g. 2026-12-01T00:00:00Z")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 date and time, e.g. 2026-12-01T00:00:00Z") from None
        try:
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except OverflowError:  # an offset that takes it past year 9999 or before year 1 in UTC
            raise ValueError(f"{value!r} is out of range once converted to UTC") from None
