"""The kwparams of each RPC method. Unknown keys are refused by name; types are strict."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from openworkbench.models import JobSpec, LaunchParameters, SessionHook


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoParams(Params):
    pass


class GetComputeEnvs(Params):
    user: str | None = None


class LaunchJob(Params):
    job: JobSpec
    apply_config_settings: bool = True


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
    timestamp: float | None = Field(default=None, allow_inf_nan=False)  # a previous answer's: only what changed


class LaunchSession(Params):
    workbench: str
    username: str | None = None
    name: str | None = None
    open_file: str | None = None
    working_directory: str | None = None
    launch_parameters: LaunchParameters | None = None
    start_hooks: list[SessionHook] | SessionHook | None = None
    stop_hooks: list[SessionHook] | SessionHook | None = None
    environment: list[dict[str, str]] | dict[str, str] | None = None


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
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
