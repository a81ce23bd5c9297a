"""One handler per RPC method. Each checks permissions through the policy and calls a service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from openworkbench import __version__
from openworkbench.api import params as p
from openworkbench.api.rpc import Method
from openworkbench.auth.permissions import Action, Principal, require
from openworkbench.errors import InternalError, WorkbenchError
from openworkbench.services.compute import compute_envs
from openworkbench.services.container import Services
from openworkbench.services.session_json import select_fields
from openworkbench.services.session_views import View

FEATURES = [
    "launch_job", "get_job_output", "stop_job", "get_session", "get_compute_envs", "get_users",
    "launch_session", "resume_session", "stop_session", "session_suspend",
]


def version(services: Services, principal: Principal, params: p.NoParams) -> Any:
    major, minor, patch = __version__.split(".")
    payload = {
        "version": {
            "major": major,
            "minor": minor,
            "patch": patch,
            "build_number": "0",
            "release_name": "Open Workbench",
            "build_type": "Release",
        },
        "features": FEATURES,
    }
    # The live product answers bare, the reference inside "result": serve both at once.
    return JSONResponse({**payload, "result": payload})


def get_users(services: Services, principal: Principal, params: p.NoParams) -> Any:
    require(principal, Action.LIST_USERS)
    return services.accounts.list_users()


def get_compute_envs(services: Services, principal: Principal, params: p.GetComputeEnvs) -> Any:
    require(principal, Action.READ, params.user or principal.username)
    return compute_envs(services.settings, services.clusters)


def launch_job(services: Services, principal: Principal, params: p.LaunchJob) -> Any:
    job = params.job
    if principal.session_id is not None:  # called with a session's RPC cookie: the job gets one too
        job = services.sessions.with_session_cookie(principal.session_id, job)
    return {"job": services.jobs.launch(principal, job)}


def stop_job(services: Services, principal: Principal, params: p.StopJob) -> Any:
    services.jobs.stop(principal, params.job_id, params.force_quit)
    return {}


async def get_job_output(services: Services, principal: Principal, params: p.GetJobOutput) -> Any:
    chunks = await services.jobs.output(principal, params.job_id, params.user)
    return StreamingResponse(_guarded(chunks), media_type="application/x-ndjson")


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """An error in mid-stream becomes one more line, as the product does."""
    try:
        async for chunk in chunks:
            yield chunk
    except (WorkbenchError, OSError) as exc:
        err = exc if isinstance(exc, WorkbenchError) else InternalError(f"reading the job's output failed: {exc}")
        yield json.dumps({"error": {"code": err.code, "message": err.message}}).encode() + b"\n"


def get_session(services: Services, principal: Principal, params: p.GetSession) -> Any:
    username = params.user or principal.username
    views = services.sessions.read(principal, username, params.session_id)
    if not (params.fields or params.include_jobs or params.include_all_jobs or params.include_projects):
        return sessions_response(views)
    result: dict[str, Any] = {"sessions": [select_fields(view.data, params.fields) for view in views]}
    if params.include_all_jobs:
        result["jobs"] = services.jobs.list_for(principal, username, None)
    elif params.include_jobs:  # the jobs of the sessions just listed: no second query for their ids
        result["jobs"] = services.jobs.list_for(principal, username, [view.data["id"] for view in views])
    if params.include_projects:
        result["projects"] = services.sessions.projects(principal, username)
    return result


def get_session_cached(services: Services, principal: Principal, params: p.GetSession) -> Response | None:
    """The plain listing, answered from memory; None sends the call down the store path."""
    if params.fields or params.include_jobs or params.include_all_jobs or params.include_projects:
        return None
    views = services.sessions.read_cached(principal, params.user, params.session_id)
    return None if views is None else sessions_response(views)


def sessions_response(views: list[View]) -> Response:
    # Each session's JSON is encoded once, when it is cached: a list is a join of bytes.
    body = b'{"result":{"sessions":[' + b",".join(view.raw for view in views) + b"]}}"
    return Response(body, media_type="application/json")


async def launch_session(services: Services, principal: Principal, params: p.LaunchSession) -> Any:
    return await services.sessions.launch(principal, params)


async def resume_session(services: Services, principal: Principal, params: p.ResumeSession) -> Any:
    return await services.sessions.resume(principal, params)


async def stop_session(services: Services, principal: Principal, params: p.StopSession) -> Any:
    return await services.sessions.stop(principal, params)


METHODS: dict[str, Method] = {
    "version": Method(p.NoParams, blocking=version, allow_get=True, cached=version),
    "get_users": Method(p.NoParams, blocking=get_users, allow_get=True),
    "get_compute_envs": Method(p.GetComputeEnvs, blocking=get_compute_envs, allow_get=True),
    "launch_job": Method(p.LaunchJob, blocking=launch_job),
    "get_job_output": Method(p.GetJobOutput, handler=get_job_output),
    "stop_job": Method(p.StopJob, blocking=stop_job),
    "get_session": Method(p.GetSession, blocking=get_session, allow_get=True, cached=get_session_cached),
    "launch_session": Method(p.LaunchSession, handler=launch_session),
    "resume_session": Method(p.ResumeSession, handler=resume_session),
    "stop_session": Method(p.StopSession, handler=stop_session),
}
