"""The session methods' parameters as the session service's requests (sessions/requests.py)."""

from __future__ import annotations

from typing import Any

from openworkbench.api import params as p
from openworkbench.sessions.requests import LaunchRequest, ResumeRequest, StopRequest


def _hooks(value: Any) -> tuple[str, ...]:
    """One hook or a list of them (the product accepts both)."""
    if value is None:
        return ()
    return tuple(hook.exe for hook in (value if isinstance(value, list) else [value]))


def _environment(value: Any) -> tuple[dict[str, str], ...]:
    """A {name: value} map or a list of {"name", "value"} (both validated by the params)."""
    if isinstance(value, dict):
        return tuple({"name": key, "value": val} for key, val in value.items())
    return tuple(value or [])


def launch_request(params: p.LaunchSession) -> LaunchRequest:
    return LaunchRequest(
        workbench=params.workbench, username=params.username, name=params.name, open_file=params.open_file,
        working_directory=params.working_directory, project_id=params.project_id,
        launch_parameters=params.launch_parameters.model_dump() if params.launch_parameters else None,
        start_hooks=_hooks(params.start_hooks), stop_hooks=_hooks(params.stop_hooks),
        environment=_environment(params.environment),
    )


def resume_request(params: p.ResumeSession) -> ResumeRequest:
    launch = params.launch_parameters.model_dump() if params.launch_parameters else None
    return ResumeRequest(session_id=params.session_id, username=params.username, launch_parameters=launch)


def stop_request(params: p.StopSession) -> StopRequest:
    ids = tuple(item.strip() for item in params.session_ids.split(",") if item.strip())
    return StopRequest(session_ids=ids, force=params.force_quit, suspend=params.suspend_session or params.suspend)
