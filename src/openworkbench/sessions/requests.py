"""What a caller asks of the session service, in the service's own terms (not the API's parameters).

api/session_requests.py builds them from ``launch_session``/``resume_session``/``stop_session`` parameters;
anything else (the CLI in-process, a test) can build them directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LaunchRequest:
    workbench: str
    username: str | None = None  # None: the caller's own session
    name: str | None = None
    open_file: str | None = None
    working_directory: str | None = None
    project_id: str | None = None  # open in that project's directory
    launch_parameters: Mapping[str, Any] | None = None  # cluster, queues, limits, images (models.LaunchParameters)
    start_hooks: tuple[str, ...] = ()  # executables, run as jobs before the IDE
    stop_hooks: tuple[str, ...] = ()
    environment: tuple[Mapping[str, str], ...] = ()  # {"name", "value"} each, as a job's environment


@dataclass(frozen=True)
class ResumeRequest:
    session_id: str
    username: str | None = None
    launch_parameters: Mapping[str, Any] | None = None  # None: as it was launched


@dataclass(frozen=True)
class StopRequest:
    session_ids: tuple[str, ...]
    force: bool = False
    suspend: bool = False
